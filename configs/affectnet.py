"""AffectNet-7 (or -8) with ImageNet DenseNet-121, on DAN's AffectNet recipe.

Source: yaoing/DAN affectnet.py (Wen et al., "Distract Your Attention",
2023): 65.69% (AffectNet-7) and 62.09% (AffectNet-8) published with a
ResNet-18 pretrained on MS-Celeb-1M, selecting the best epoch on AffectNet's
official validation set, which is everyone's test set (this project's
'test' split). Here DenseNet-121 starts from Keras's ImageNet weights and
keeps the recipe: 224x224 face crops, horizontal flips, class-balanced
draws (weights 1 / class count, with replacement), for 70% of the images a
random affine move, ImageNet mean/std, RandomErasing (p 0.5, area 2-33%);
Adam (AdamW without weight decay) at lr 1e-4, batch 256, lr x 0.6 after
every epoch, 40 epochs. DAN's RandomAffine(20, scale=(0.8, 1),
translate=(0.2, 0.2)) is approximated by a rotation of up to 20 degrees and
a 224 crop of the image padded by 45 px (a shift of up to 20%); its scaling
is left out.

AffectNet-7 by default; --config.dataset=affectnet8 for 8 classes. The two
releases (the original with its CSV lists, the "npy" one) are both read.
Checkpoints are selected on a validation split carved from train (10% of
each class); the test split (the official validation set) is evaluated
once, at the end. --config.select_on=test reproduces DAN's protocol.

  python train.py --config configs/affectnet.py --workdir runs/affectnet7 \
      --config.manual_dir ~/Downloads/AffectNet
"""

from densenet_flax.config_keys import base_config


def get_config():
  config = base_config()
  config.model = 'densenet121'
  config.init_from = 'keras:DenseNet121'  # ImageNet weights (downloads)
  config.dataset = 'affectnet7'  # or affectnet8
  config.train_split = 'train'
  config.eval_split = 'validation'  # carved from train
  config.validation_fraction = 0.1
  config.test_split = 'test'  # AffectNet's official validation set
  config.image_size = 224
  config.channels = 3
  config.augment.crop = 'pad'  # ~ RandomAffine's translate=(0.2, 0.2)
  config.augment.crop_padding = 45
  config.augment.rotation = 20.0  # RandomAffine(20, ...)
  config.augment.geometric_probability = 0.7  # RandomApply(..., p=0.7)
  config.augment.flip = True
  config.augment.erasing = 0.5  # RandomErasing()
  config.augment.erasing_scale = (0.02, 0.33)
  config.class_sampling = 'balanced'  # ImbalancedDatasetSampler
  config.half_precision = True
  config.batch_size = 256
  config.eval_batch_size = 256
  config.num_epochs = 40
  config.optimizer = 'adamw'  # torch.optim.Adam, weight_decay=0
  config.learning_rate = 1e-4
  config.lr_batch_reference = 256
  config.weight_decay = 0.0
  config.schedule = 'exponential'  # ExponentialLR(gamma=0.6), per epoch
  config.lr_decay = 0.6
  config.checkpoint_every_steps = 2000
  config.log_every_steps = 50
  config.eval_every_epochs = 1
  return config
