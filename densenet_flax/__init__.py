"""densenet-flax: DenseNets in JAX/Flax.

Importing the package is light: it loads neither TensorFlow nor the dataset
builders. `densenet_flax.models` holds the model family; `densenet_flax.datasets`
registers the TFDS builders when imported.
"""

__version__ = '0.1.0'
