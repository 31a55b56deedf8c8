"""The paper's CIFAR-10 recipe for DenseNet-BC (L=100, k=12): 4.51% error (C10+).

Batch 64, 300 epochs, SGD with Nesterov momentum 0.9, lr 0.1 divided by 10 at
50% and 75% of training, weight decay 1e-4 (L2), pad-4 crops and flips.
"""

from densenet_flax.config_keys import base_config


def get_config():
  config = base_config()
  config.model = 'densenet_bc_100_12'
  config.dataset = 'cifar10'
  config.eval_split = 'test'
  config.test_split = ''
  config.image_size = 32
  config.channels = 3
  config.augment.crop = 'pad'
  config.augment.crop_padding = 4
  config.augment.flip = True
  config.batch_size = 64
  config.eval_batch_size = 512
  config.num_epochs = 300
  config.optimizer = 'sgd'
  config.nesterov = True
  config.momentum = 0.9
  config.learning_rate = 0.1
  config.lr_batch_reference = 64  # the paper's batch; scales linearly
  config.schedule = 'piecewise'
  config.lr_boundaries = (0.5, 0.75)
  config.lr_decay = 0.1
  config.weight_decay = 1e-4
  config.weight_decay_mode = 'l2'
  config.checkpoint_every_steps = 5000
  return config
