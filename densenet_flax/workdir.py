"""Deprecated: split into run_directory, resume_policy and recipe.

run_directory  a run's files: config.json, normalization.json, checkpoints
               (load_config, save_config, normalization, open_checkpoints,
               restore_variables)
resume_policy  RESULT_KEYS, BOOKKEEPING_KEYS, config_changes,
               ConfigChangeError
recipe         what a config means: build_model, num_classes,
               input_shape, compute_dtype, uses_ema, identity
"""

import warnings

from densenet_flax.recipe import build_model  # noqa: F401
from densenet_flax.recipe import compute_dtype  # noqa: F401
from densenet_flax.recipe import dynamic_loss_scaling  # noqa: F401
from densenet_flax.recipe import identity as run_identity  # noqa: F401
from densenet_flax.recipe import input_shape  # noqa: F401
from densenet_flax.recipe import num_classes  # noqa: F401
from densenet_flax.recipe import uses_ema  # noqa: F401
from densenet_flax.resume_policy import BOOKKEEPING_KEYS  # noqa: F401
from densenet_flax.resume_policy import RESULT_KEYS  # noqa: F401
from densenet_flax.resume_policy import ConfigChangeError  # noqa: F401
from densenet_flax.resume_policy import config_changes  # noqa: F401
from densenet_flax.run_directory import CONFIG_FILE  # noqa: F401
from densenet_flax.run_directory import NORMALIZATION_FILE  # noqa: F401
from densenet_flax.run_directory import load_config  # noqa: F401
from densenet_flax.run_directory import normalization  # noqa: F401
from densenet_flax.run_directory import open_checkpoints  # noqa: F401
from densenet_flax.run_directory import restore_variables  # noqa: F401
from densenet_flax.run_directory import save_config  # noqa: F401
from densenet_flax.run_directory import save_normalization  # noqa: F401

warnings.warn(
  'densenet_flax.workdir is deprecated: its parts are in '
  'densenet_flax.run_directory, densenet_flax.resume_policy and '
  'densenet_flax.recipe',
  DeprecationWarning,
  stacklevel=2,
)
