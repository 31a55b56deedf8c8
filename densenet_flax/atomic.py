"""Files written whole or not at all: a temporary file, then a rename.

A crash, a full disk or a second process reading mid-write never sees half
a file: the old one stays until the new one is complete and on disk.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator


@contextlib.contextmanager
def replacing(path: str) -> Iterator[str]:
  """Yields a temporary path beside `path` (same suffix) to write to; on
  success it is flushed to disk and renamed over `path`, on failure
  removed. `path`'s folder is made if missing, as for every output."""
  directory, name = os.path.split(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  stem, suffix = os.path.splitext(name)
  temporary = os.path.join(
    directory, f'.{stem}.{secrets.token_hex(4)}.tmp{suffix}'
  )
  # Created as open() creates files (0o666 less the umask), unlike mkstemp's
  # 0o600: the renamed file is readable as a plainly written one would be.
  os.close(os.open(temporary, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
  try:
    yield temporary
    with open(temporary, 'rb') as f:
      os.fsync(f.fileno())
    os.replace(temporary, path)
  except BaseException:
    with contextlib.suppress(OSError):
      os.remove(temporary)
    raise


def write_text(path: str, text: str) -> None:
  """Writes `text` to `path` atomically."""
  with replacing(path) as temporary:
    with open(temporary, 'w') as f:
      f.write(text)
