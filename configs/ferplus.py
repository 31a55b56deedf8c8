"""FER+ (8 emotions) with `fer_densenet`; otherwise as configs/fer2013.py.

Trains in the FER+ paper's 'probability' mode (Barsoum et al. 2016, its
"probabilistic label drawing", named as in microsoft/FERPlus): each step
draws every face's label from its crowd-vote distribution, so faces the crowd
split on train on all of their plausible labels, and rows without a majority
label (which 'majority' leaves out) train too. Evaluation and checkpoint
selection use the majority labels, as the paper reports. The other modes:
--config.label_mode=majority|crossentropy|multi_target.

Needs fer2013new.csv (microsoft/FERPlus) and fer2013.csv in the manual dir.
"""

import os

from densenet_flax.config_keys import load_config_file


def get_config():
  config = load_config_file(
    os.path.join(os.path.dirname(__file__), 'fer2013.py')
  )
  config.dataset = 'ferplus'
  config.label_mode = 'probability'
  return config
