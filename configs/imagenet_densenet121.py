"""The paper's ImageNet recipe for DenseNet-121: 25.02% top-1 error (1 crop).

Batch 256, 90 epochs, SGD with Nesterov momentum 0.9, lr 0.1 divided by 10 at
epochs 30 and 60, weight decay 1e-4, Inception-style random-resized crops and
flips; evaluation on the 224 centre crop of the image resized to 256, and a
final ten-crop evaluation. Needs ILSVRC2012 tars in the manual dir.
"""

from densenet_flax.config_keys import base_config


def get_config():
  config = base_config()
  config.model = 'densenet121'
  config.dataset = 'imagenet2012'
  config.eval_split = 'validation'
  config.test_split = 'validation'
  # ImageNet's test labels are not public: the paper reports its validation
  # set after the last epoch, picking no checkpoint on it.
  config.select_on = 'last'
  config.test_tta = 'ten_crop'
  config.image_size = 224
  config.channels = 3
  config.augment.crop = 'resized'
  config.augment.flip = True
  config.half_precision = True
  config.batch_size = 256
  config.eval_batch_size = 256
  config.num_epochs = 90
  config.optimizer = 'sgd'
  config.nesterov = True
  config.momentum = 0.9
  config.learning_rate = 0.1
  config.lr_batch_reference = 256
  config.schedule = 'piecewise'
  config.lr_boundaries = (1 / 3, 2 / 3)  # epochs 30 and 60 of 90
  config.weight_decay = 1e-4
  config.checkpoint_every_steps = 5000
  config.log_every_steps = 100
  return config
