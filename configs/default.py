"""The offline demo: a small DenseNet-BC on scikit-learn's 8x8 digits.

Needs no download; on 2 CPU cores it trains in a few minutes to >= 97% test
accuracy. Every key of the base config is listed in densenet_flax/config.py.
"""

from densenet_flax.config_keys import base_config


def get_config():
  config = base_config()
  config.model = 'densenet_bc_100_12'
  # DenseNet-BC with 3 blocks of 4 bottleneck layers (k=12): 51,094 params.
  config.model_overrides.block_sizes = (4, 4, 4)
  config.dataset = 'digits'
  # Digits has no validation split: the test split is watched every epoch
  # and reported once at the end on the last state, chosen by nothing.
  config.eval_split = 'test'
  config.test_split = 'test'
  config.select_on = 'last'
  config.image_size = 16
  config.channels = 1
  config.augment.resize = 16  # 8x8 -> 16x16
  config.augment.crop = 'pad'
  config.augment.crop_padding = 2
  config.augment.flip = False  # a mirrored digit is another symbol
  config.augment.rotation = 10.0
  config.batch_size = 64
  config.eval_batch_size = 128
  config.num_epochs = 20
  config.learning_rate = 0.1
  config.schedule = 'cosine'
  config.warmup_epochs = 1.0
  config.checkpoint_every_steps = 200
  config.log_every_steps = 20
  return config
