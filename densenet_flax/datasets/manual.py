"""The manual directory of a builder, with an error that says what to put there."""

from __future__ import annotations

import os


def manual_dir(dl_manager, instructions: str) -> str:
  """dl_manager's manual dir; FileNotFoundError naming the path if absent/empty."""
  path = getattr(dl_manager, '_manual_dir', None)
  if path is None or not os.path.isdir(path) or not os.listdir(path):
    raise FileNotFoundError(
      f'The manual directory {path} does not exist or is empty.\n\n'
      f'{instructions}'
    )
  return os.fspath(path)
