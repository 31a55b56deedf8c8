"""What the command lines do before their work starts.

By default a command prints what a person needs: our own progress and
results, and warnings and errors from anyone. Other libraries' INFO records
(Orbax, absl, TensorFlow's and XLA's native start-up lines) show with
--verbose.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys


def define_verbose_flag() -> None:
  from absl import flags

  flags.DEFINE_bool(
    'verbose',
    False,
    "Also show other libraries' INFO records (Orbax, TensorFlow, XLA).",
  )


def set_log_levels(verbose: bool = False) -> None:
  """Our INFO lines; other libraries' warnings and errors only, unless
  `verbose`. Call before TensorFlow is imported: its native logging reads
  TF_CPP_MIN_LOG_LEVEL once, at import (a value the user set is kept)."""
  from absl import logging as absl_logging

  if verbose:
    absl_logging.set_verbosity(absl_logging.INFO)
    logging.getLogger().setLevel(logging.INFO)
    return
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '1')  # native INFO lines
  absl_logging.set_verbosity(absl_logging.WARNING)  # Orbax's per-save lines
  logging.getLogger().setLevel(logging.WARNING)  # XLA's backend probing
  logging.getLogger('densenet_flax').setLevel(logging.INFO)


def start_command(args, verbose: bool = False, tensorflow: bool = True) -> None:
  """Rejects stray arguments, sets log levels, keeps TF off the accelerators.

  For the commands that read data with tf.data (train, evaluate, export);
  with `tensorflow=False` (ONNX export), TensorFlow is not imported.
  """
  from absl import app

  if len(args) > 1:
    raise app.UsageError(f'Unexpected arguments: {args[1:]}')
  set_log_levels(verbose)
  if not tensorflow:
    return
  with contextlib.nullcontext() if verbose else _native_banners_dropped():
    import tensorflow as tf
  # tf.data runs on the host; the accelerators belong to JAX.
  tf.config.set_visible_devices([], 'GPU')


# TensorFlow's native start-up lines: INFO, printed on every import.
_NATIVE_BANNERS = (
  'All log messages before absl::InitializeLog() is called',
  'oneDNN custom operations are on',
)


@contextlib.contextmanager
def _native_banners_dropped():
  """TensorFlow's C++ prints its start-up lines straight to file descriptor
  2 at import, whatever TF_CPP_MIN_LOG_LEVEL says. Descriptor 2 goes to a
  temporary file meanwhile; every other line it received (warnings, errors)
  is written back to stderr afterwards, also when the import fails."""
  import tempfile

  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile(mode='w+') as captured:
    try:
      os.dup2(captured.fileno(), 2)
      yield
    finally:
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
      captured.seek(0)
      for line in captured:
        if not any(banner in line for banner in _NATIVE_BANNERS):
          sys.stderr.write(line)
      sys.stderr.flush()
