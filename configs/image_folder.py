"""Class folders (root/<split>/<class>/*.jpg) with ImageNet DenseNet-121.

For face datasets laid out as class folders (RAF-DB or AffectNet as POSTER
V2 and DDAMFN read them, or your own): configs/rafdb.py's recipe (DAN's
RAF-DB recipe, source yaoing/DAN rafdb.py), with every image resized to
224x224 first, whatever its stored size. The classes come from train/'s
folders (numeric names in numeric order) and go to the run's config.json.

Checkpoints are selected on a validation split carved from train (10% of
each class); where the root has its own validation folder, pass
--config.eval_split=val (its name). The test split is evaluated once.

  python train.py --config configs/image_folder.py --workdir runs/faces \
      --config.manual_dir ~/data/faces     # the root holding train/, test/
"""

import os

from densenet_flax import config_keys


def get_config():
  config = config_keys.load_config_file(
    os.path.join(os.path.dirname(os.path.abspath(__file__)), 'rafdb.py')
  )
  config.dataset = 'image_folder'
  config.augment.resize = 224  # any stored size -> 224x224
  return config
