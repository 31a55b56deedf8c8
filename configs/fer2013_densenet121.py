"""FER2013 upscaled to 224px RGB with ImageNet-style DenseNet-121.

Trained from scratch. The published DenseNet-121 FER result (73.16% on
PrivateTest) starts from ImageNet weights: that recipe is
configs/fer2013_densenet121_finetune.py (or set --config.init_from here).
"""

from densenet_flax.config_keys import base_config


def get_config():
  config = base_config()
  config.model = 'densenet121'
  config.dataset = 'fer2013'
  config.init_from = ''  # 'keras:DenseNet121' = ImageNet weights
  config.eval_split = 'public_test'
  config.test_split = 'private_test'
  config.test_tta = 'ten_crop'
  config.image_size = 224
  config.channels = 3  # grayscale replicated to RGB
  config.augment.resize = 240  # 48 -> 240, then random 224 crops
  config.augment.crop = 'random'
  config.augment.flip = True
  config.augment.rotation = 10.0
  config.half_precision = True
  config.batch_size = 64
  config.eval_batch_size = 128
  config.num_epochs = 40
  config.optimizer = 'sgd'
  config.nesterov = True
  config.learning_rate = 0.01
  config.lr_batch_reference = 64
  config.schedule = 'cosine'
  config.warmup_epochs = 1.0
  config.weight_decay = 1e-4
  config.checkpoint_every_steps = 2000
  return config
