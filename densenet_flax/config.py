"""Deprecated: densenet_flax.config_keys (every key, its default, its choices).

Kept so that config files written as `from densenet_flax.config import
base_config` go on loading; they should import densenet_flax.config_keys.
"""

import warnings

from densenet_flax.config_keys import *  # noqa: F403
from densenet_flax.config_keys import base_config  # noqa: F401
from densenet_flax.config_keys import load_config_file  # noqa: F401

warnings.warn(
  'densenet_flax.config is deprecated: import densenet_flax.config_keys '
  '(base_config, load_config_file, the choices of each key)',
  DeprecationWarning,
  stacklevel=2,
)
