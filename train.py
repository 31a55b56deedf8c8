"""Train a DenseNet: python train.py --workdir DIR [--config configs/X.py].

Without --config it runs the offline digits demo (configs/default.py).
Config fields can be overridden, e.g. --config.num_epochs=3.
"""

from densenet_flax.train import main

if __name__ == '__main__':
  main()
