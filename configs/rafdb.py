"""RAF-DB (basic) with ImageNet DenseNet-121, on DAN's RAF-DB recipe.

Source: yaoing/DAN rafdb.py (Wen et al., "Distract Your Attention", 2023),
89.70% published with a ResNet-18 pretrained on MS-Celeb-1M, selecting its
best epoch on the test split. Here DenseNet-121 starts from Keras's ImageNet
weights and keeps the recipe's data and schedule: the 100x100 aligned faces
resized to 224, horizontal flips, for 20% of the images a rotation of up to
20 degrees and a 224 crop of the image padded by 32, ImageNet mean/std,
RandomErasing (p 0.5, area 2-25%); SGD with momentum 0.9 (no Nesterov), lr
0.1 at batch 256, weight decay 1e-4, lr / 10 every 10 of 40 epochs.

Checkpoints are selected on a validation split carved from train (10% of
each class, seeded); the test split is evaluated once, at the end.
--config.select_on=test reproduces DAN's protocol (reports say so).

  python train.py --config configs/rafdb.py --workdir runs/rafdb \
      --config.manual_dir ~/Downloads/RAF-DB/basic
"""

from densenet_flax.config_keys import base_config


def get_config():
  config = base_config()
  config.model = 'densenet121'
  config.init_from = 'keras:DenseNet121'  # ImageNet weights (downloads)
  config.dataset = 'rafdb'
  config.train_split = 'train'
  config.eval_split = 'validation'  # carved from train
  config.validation_fraction = 0.1
  config.test_split = 'test'
  config.image_size = 224
  config.channels = 3
  config.augment.resize = 224  # transforms.Resize((224, 224))
  config.augment.crop = 'pad'  # RandomCrop(224, padding=32)
  config.augment.crop_padding = 32
  config.augment.rotation = 20.0  # RandomRotation(20)
  config.augment.geometric_probability = 0.2  # RandomApply(..., p=0.2)
  config.augment.flip = True
  config.augment.erasing = 0.5  # RandomErasing(scale=(0.02, 0.25))
  config.augment.erasing_scale = (0.02, 0.25)
  config.half_precision = True
  config.batch_size = 256
  config.eval_batch_size = 256
  config.num_epochs = 40
  config.optimizer = 'sgd'
  config.nesterov = False
  config.momentum = 0.9
  config.learning_rate = 0.1
  config.lr_batch_reference = 256
  config.schedule = 'piecewise'  # StepLR(step_size=10, gamma=0.1)
  config.lr_boundaries = (0.25, 0.5, 0.75)
  config.lr_decay = 0.1
  config.weight_decay = 1e-4
  config.checkpoint_every_steps = 1000
  config.log_every_steps = 20
  return config
