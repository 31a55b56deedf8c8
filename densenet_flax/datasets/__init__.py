"""TFDS builders of this project; importing this package registers them.

  fer2013       FER2013 faces from a manually downloaded release (any of four)
  ferplus       FER+ crowd labels joined to FER2013 (manual download)
  rafdb         RAF-DB's basic release, aligned 100x100 RGB faces (manual)
  affectnet7    AffectNet, 7 classes, either release, 224x224 RGB (manual)
  affectnet8    AffectNet, 8 classes (contempt too)
  image_folder  class folders root/<split>/<class>/*.jpg (takes the root)
  digits        scikit-learn's 8x8 digits, offline (the demo dataset)

The image-file builders (rafdb, affectnet7/8, image_folder) write
array_record, for random access (image_builder.py).

`prepare.load_builder(name, ...)` prepares any of these or a catalogue dataset
(cifar10, cifar100, imagenet2012) and fails fast with instructions when the
data is not there and cannot be downloaded.
"""

from densenet_flax.datasets.affectnet7 import affectnet7_dataset_builder
from densenet_flax.datasets.affectnet8 import affectnet8_dataset_builder
from densenet_flax.datasets.digits import digits_dataset_builder
from densenet_flax.datasets.fer2013 import fer2013_dataset_builder
from densenet_flax.data.sources import DataFormatError
from densenet_flax.datasets.ferplus import ferplus_dataset_builder
from densenet_flax.datasets.image_folder import image_folder_dataset_builder
from densenet_flax.datasets.rafdb import rafdb_dataset_builder

__all__ = [
  'DataFormatError',
  'affectnet7_dataset_builder',
  'affectnet8_dataset_builder',
  'digits_dataset_builder',
  'fer2013_dataset_builder',
  'ferplus_dataset_builder',
  'image_folder_dataset_builder',
  'rafdb_dataset_builder',
]
