"""FER+ (majority labels, 8 emotions) with `fer_densenet`; as configs/fer2013.py.

Needs fer2013new.csv (microsoft/FERPlus) and fer2013.csv in the manual dir.
"""

import os

from densenet_flax.config import load_config_file


def get_config():
  config = load_config_file(os.path.join(os.path.dirname(__file__),
                                         'fer2013.py'))
  config.dataset = 'ferplus'
  return config
