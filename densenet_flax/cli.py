"""What the command lines do before their work starts."""

from __future__ import annotations

import logging


def set_log_levels() -> None:
  """Our INFO lines; other libraries' warnings and errors only."""
  from absl import logging as absl_logging

  absl_logging.set_verbosity(absl_logging.WARNING)  # Orbax's per-save lines
  logging.getLogger('densenet_flax').setLevel(logging.INFO)


def start_command(args) -> None:
  """Rejects stray arguments, keeps TF off the accelerators, sets log levels.

  For the commands that read data with tf.data (train, evaluate, export).
  """
  from absl import app

  if len(args) > 1:
    raise app.UsageError(f'Unexpected arguments: {args[1:]}')
  # tf.data runs on the host; the accelerators belong to JAX.
  import tensorflow as tf
  tf.config.set_visible_devices([], 'GPU')
  set_log_levels()
