"""Files written whole or not at all: a temporary file, then a rename.

A crash, a full disk or a second process reading mid-write never sees half
a file: the old one stays until the new one is complete and on disk.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator


@contextlib.contextmanager
def replacing(path: str) -> Iterator[str]:
  """Yields a temporary path beside `path` (same suffix) to write to; on
  success it is flushed to disk and renamed over `path`, on failure
  removed."""
  directory, name = os.path.split(os.path.abspath(path))
  stem, suffix = os.path.splitext(name)
  fd, temporary = tempfile.mkstemp(prefix=f'.{stem}.', suffix=f'.tmp{suffix}',
                                   dir=directory)
  os.close(fd)
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
