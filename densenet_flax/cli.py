"""What both command lines (train, evaluate) do before their work starts."""

from __future__ import annotations

import logging


def start_command(args) -> None:
  """Rejects stray arguments, keeps TF off the accelerators, sets log levels."""
  from absl import app
  from absl import logging as absl_logging

  if len(args) > 1:
    raise app.UsageError(f'Unexpected arguments: {args[1:]}')
  # tf.data runs on the host; the accelerators belong to JAX.
  import tensorflow as tf
  tf.config.set_visible_devices([], 'GPU')
  absl_logging.set_verbosity(absl_logging.WARNING)  # Orbax's per-save lines
  logging.getLogger('densenet_flax').setLevel(logging.INFO)
