"""FER2013 with the 48x48 `fer_densenet`: the project's headline recipe.

Random 44px crops + flip + rotation, SGD with Nesterov momentum; checkpoints
are selected on public_test and the best one is tested on private_test with
ten-crop test-time augmentation (the FER standard).

  python train.py --config configs/fer2013.py --workdir runs/fer2013 \
      --config.manual_dir ~/Downloads/fer2013   # where fer2013.csv is
"""

from densenet_flax.config_keys import base_config


def get_config():
  config = base_config()
  config.model = 'fer_densenet'  # 999,079 params; dropout 0.2
  config.dataset = 'fer2013'
  config.train_split = 'train'
  config.eval_split = 'public_test'
  config.test_split = 'private_test'
  config.test_tta = 'ten_crop'
  config.image_size = 44
  config.channels = 1
  config.augment.crop = 'random'  # 44 of 48; eval: centre crop / ten crops
  config.augment.flip = True
  config.augment.rotation = 10.0
  config.batch_size = 128
  config.eval_batch_size = 512
  config.num_epochs = 150
  config.optimizer = 'sgd'
  config.nesterov = True
  config.momentum = 0.9
  config.learning_rate = 0.1
  config.lr_batch_reference = 128  # linear scaling for other batch sizes
  config.schedule = 'piecewise'
  config.lr_boundaries = (0.5, 0.75)
  config.weight_decay = 1e-4
  config.class_weighting = 'none'  # 'balanced' up-weights Disgust (1.5%)
  config.checkpoint_every_steps = 1000
  return config
