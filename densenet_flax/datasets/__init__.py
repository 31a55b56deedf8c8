"""TFDS builders of this project; importing this package registers them.

  fer2013  FER2013 faces from a manually downloaded release (any of four)
  ferplus  FER+ crowd labels joined to FER2013 (manual download)
  digits   scikit-learn's 8x8 digits, offline (the demo dataset)

`prepare.load_builder(name, ...)` prepares any of these or a catalogue dataset
(cifar10, cifar100, imagenet2012) and fails fast with instructions when the
data is not there and cannot be downloaded.
"""

from densenet_flax.datasets.digits import digits_dataset_builder
from densenet_flax.datasets.fer2013 import fer2013_dataset_builder
from densenet_flax.data.fer_sources import DataFormatError
from densenet_flax.datasets.ferplus import ferplus_dataset_builder

__all__ = [
  'DataFormatError',
  'digits_dataset_builder',
  'fer2013_dataset_builder',
  'ferplus_dataset_builder',
]
