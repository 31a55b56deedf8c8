"""What every dataset reader shares: its error, its example, its skip log.

The readers (fer_sources, rafdb, affectnet, image_folder) are plain Python,
NumPy and Pillow, so they run and are tested without TensorFlow; the TFDS
builders wrap them. A reader refuses bad input with a `DataFormatError` that
names the file (and line) and what was expected. Whatever a reader leaves
out by rule (AffectNet's non-emotion codes) or by request (unreadable images
under `skip_unreadable=True`) is counted in a `Skipped`, never dropped
silently.
"""

from __future__ import annotations

import codecs
import collections
import csv
import dataclasses
import logging
import os
from collections.abc import Iterator, Mapping
from typing import IO

import numpy as np

IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png')
# Reasons an image listed by a release is skipped under skip_unreadable=True.
MISSING_IMAGE = 'missing_image'
UNREADABLE_IMAGE = 'unreadable_image'
# How many file names a Skipped keeps per reason (the counts are exact).
FIRST_FILES = 5

log = logging.getLogger(__name__)


class DataFormatError(ValueError):
  """A source file does not have the documented format; says where and why."""


@dataclasses.dataclass(frozen=True)
class Example:
  """One labelled image of a release.

  key: stable id, unique within the split ('row00017', 'train_00001.jpg').
  split: the split name ('train', 'test', ...).
  image: [H, W, C] uint8 (C = 1 for FER2013, 3 for the color datasets).
  label: class id, in the reader's class-name order.
  file: the image's path relative to the release root ('' for a CSV row).
  extras: further per-example values (AffectNet: valence, arousal float32,
    landmarks [68, 2] float32).
  """

  key: str
  split: str
  image: np.ndarray
  label: int
  file: str = ''
  extras: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)


class Skipped:
  """What a reader left out, by split and reason, with the first few files.

  counts: {split: {reason: n}}, exact. first_files: {reason: [file, ...]},
  the first FIRST_FILES files skipped for each reason, in reading order.
  """

  def __init__(self, keep: int = FIRST_FILES):
    self.keep = keep
    self.counts: dict[str, collections.Counter] = {}
    self.first_files: dict[str, list[str]] = {}

  def add(self, split: str, reason: str, file: str) -> None:
    self.counts.setdefault(split, collections.Counter())[reason] += 1
    first = self.first_files.setdefault(reason, [])
    if len(first) < self.keep:
      first.append(file)

  def include(self, split: str) -> None:
    """Lists `split` in the counts even when nothing of it was skipped."""
    self.counts.setdefault(split, collections.Counter())

  def as_dict(self) -> dict:
    """JSON-ready: {'counts': {split: {reason: n}}, 'first_files': {...}}."""
    return {
      'counts': {
        split: dict(sorted(counts.items()))
        for split, counts in self.counts.items()
      },
      'first_files': {k: list(v) for k, v in self.first_files.items()},
    }

  def summary(self, split: str) -> str:
    """'2 code_8_none (first: a.jpg, b.jpg); 1 missing_image (first: c.jpg)'."""
    counts = self.counts.get(split, {})
    if not counts:
      return 'nothing'
    parts = []
    for reason, n in sorted(counts.items()):
      first = ', '.join(self.first_files.get(reason, []))
      parts.append(f'{n} {reason} (first: {first})')
    return '; '.join(parts)

  def log(self, source: str, split: str) -> None:
    """Logs what was skipped of `split` (a warning for unreadable images)."""
    counts = self.counts.get(split, {})
    if not counts:
      return
    level = (
      logging.WARNING
      if set(counts) & {MISSING_IMAGE, UNREADABLE_IMAGE}
      else logging.INFO
    )
    log.log(level, '%s %s: skipped %s', source, split, self.summary(split))


# --- CSV files ---------------------------------------------------------------


def dict_rows(
  stream: IO[str], source: str, required: tuple[str, ...]
) -> Iterator[tuple[str, dict]]:
  """Yields (where, row) with stripped header names; checks columns and widths.

  A file that is not UTF-8 text, breaks CSV quoting, or has no data rows is a
  DataFormatError naming the file and line.
  """
  reader = csv.reader(stream)
  try:
    yield from _checked_rows(reader, source, required)
  except UnicodeDecodeError as e:  # check_utf8 first names the line exactly
    raise DataFormatError(
      f'{source}: not UTF-8 text after line {reader.line_num} (byte '
      f'{e.object[e.start : e.start + 1]!r}); expected a CSV file'
    ) from None
  except csv.Error as e:
    raise DataFormatError(
      f'{source} line {reader.line_num}: {e}; expected a CSV file'
    ) from None


def _checked_rows(reader, source: str, required: tuple[str, ...]):
  try:
    header = next(reader)
  except StopIteration:
    raise DataFormatError(
      f'{source}: the file is empty; expected a header '
      f'with columns {",".join(required)}'
    ) from None
  header = [name.strip() for name in header]
  missing = [name for name in required if name not in header]
  if missing:
    raise DataFormatError(
      f'{source} line 1: missing column(s) {missing}; found {header}, '
      f'expected {",".join(required)}'
    )
  rows = 0
  for fields in reader:
    where = f'{source} line {reader.line_num}'
    if not fields:
      raise DataFormatError(
        f'{where}: empty line; expected a row with {len(header)} fields'
      )
    if len(fields) != len(header):
      raise DataFormatError(
        f'{where}: {len(fields)} fields; expected {len(header)} '
        f'({",".join(header)})'
      )
    rows += 1
    yield where, dict(zip(header, fields))
  if not rows:
    raise DataFormatError(
      f'{source}: no rows after the header; expected one row per image'
    )


def check_utf8(path: str, chunk_size: int = 1 << 22) -> None:
  """Raises DataFormatError naming the line of the first byte that is not UTF-8.

  One streaming pass over the bytes: text decoding reads ahead in blocks, so
  the CSV reader alone cannot say on which line a bad byte is.
  """
  decoder = codecs.getincrementaldecoder('utf-8')()
  line = 1
  with open(path, 'rb') as f:
    while True:
      chunk = f.read(chunk_size)
      try:
        decoder.decode(chunk, final=not chunk)
      except UnicodeDecodeError as e:
        line += chunk.count(b'\n', 0, max(e.start, 0))
        raise DataFormatError(
          f'{path} line {line}: not UTF-8 text (byte '
          f'{chunk[e.start : e.start + 1]!r}); expected a CSV file'
        ) from None
      if not chunk:
        return
      line += chunk.count(b'\n')


# --- image files -------------------------------------------------------------


def visible(directory: str) -> list[str]:
  """Sorted entries, without hidden ones (.DS_Store, ._x, .ipynb_checkpoints)."""
  return sorted(n for n in os.listdir(directory) if not n.startswith('.'))


def is_image_name(name: str) -> bool:
  return name.lower().endswith(IMAGE_SUFFIXES)


def read_rgb(
  path: str,
  *,
  where: str,
  file: str,
  split: str,
  skip_unreadable: bool,
  skipped: Skipped,
):
  """The image at `path` as an RGB PIL image, or None when skipped.

  A missing or undecodable file is a DataFormatError at `where` (the label
  file and line that list it, or the file itself), unless skip_unreadable:
  then it is counted in `skipped` under `file` and None is returned.
  """
  from PIL import Image  # only the image readers need Pillow

  image = '' if where == path else f' {path}'  # a listed image is named
  if not os.path.isfile(path):
    reason, problem = MISSING_IMAGE, f'the image{image} does not exist'
  else:
    try:
      with Image.open(path) as opened:
        opened.load()
        return opened.convert('RGB')
    except (OSError, ValueError, Image.DecompressionBombError) as e:
      reason, problem = UNREADABLE_IMAGE, f'unreadable image{image} ({e})'
  if not skip_unreadable:
    raise DataFormatError(
      f'{where}: {problem}; expected a JPEG or PNG image (skip_unreadable '
      f'skips such images and counts them)'
    )
  skipped.add(split, reason, file)
  return None


def resized(image, size: int) -> np.ndarray:
  """An RGB PIL image as [size, size, 3] uint8 (bilinear, antialiased)."""
  from PIL import Image

  if image.size != (size, size):
    image = image.resize((size, size), Image.Resampling.BILINEAR)
  return np.asarray(image, dtype=np.uint8)
