"""Class folders (root/<split>/<class>/*.jpg) with ImageNet DenseNet-121.

For face datasets laid out as class folders (RAF-DB or AffectNet as POSTER
V2 and DDAMFN read them, or your own), on DAN's RAF-DB recipe
(configs/rafdb.py, source yaoing/DAN rafdb.py): every image resized to
224x224, flips, for 20% of the images a rotation of up to 20 degrees and a
crop of the image padded by 32, ImageNet mean/std, RandomErasing (p 0.5,
area 2-25%); SGD with momentum 0.9, lr 0.1 at batch 256, weight decay 1e-4,
lr / 10 every 10 of 40 epochs. The classes come from train/'s folders.

Checkpoints are selected on a validation split carved from train (10% of
each class); where the root has its own validation folder, pass
--config.eval_split=val (its name). The test split is evaluated once.

  python train.py --config configs/image_folder.py --workdir runs/faces \
      --config.manual_dir ~/data/faces     # the root holding train/, test/
"""

from densenet_flax.config_keys import base_config


def get_config():
  config = base_config()
  config.model = 'densenet121'
  config.init_from = 'keras:DenseNet121'  # ImageNet weights (downloads)
  config.dataset = 'image_folder'
  config.train_split = 'train'
  config.eval_split = 'validation'  # carved from train
  config.validation_fraction = 0.1
  config.test_split = 'test'
  config.image_size = 224
  config.channels = 3
  config.augment.resize = 224  # any stored size -> 224x224
  config.augment.crop = 'pad'
  config.augment.crop_padding = 32
  config.augment.rotation = 20.0
  config.augment.geometric_probability = 0.2
  config.augment.flip = True
  config.augment.erasing = 0.5
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
  config.schedule = 'piecewise'
  config.lr_boundaries = (0.25, 0.5, 0.75)
  config.lr_decay = 0.1
  config.weight_decay = 1e-4
  config.checkpoint_every_steps = 1000
  config.log_every_steps = 20
  return config
