"""Readers for the FER2013 releases and the FER+ votes (no TensorFlow).

Each reader validates every row and raises `DataFormatError` naming the file,
the line and what was expected; no row is ever dropped silently. The TFDS
builders (fer2013, ferplus) are thin wrappers around these.

Releases of FER2013 (Kaggle, "Challenges in Representation Learning: Facial
Expression Recognition Challenge"):
  - fer2013.csv: columns emotion,pixels,Usage; 2304 space-separated pixels.
  - fer2013.tar.gz: the archive holding fer2013.csv (read without extracting).
  - icml_face_data.csv: the same rows; header names carry a leading space.
  - the folder release: train/<class>/*.jpg and test/<class>/*.jpg, class
    folders named in alphabetical order (not the CSV id order); test/ holds
    PublicTest and PrivateTest, told apart by the file-name prefix.

FER+ (fer2013new.csv): 10 crowd votes per FER2013 row; `ferplus_target`
turns them into the training target of each of the paper's label modes
(FERPLUS_LABEL_MODES), exactly as microsoft/FERPlus does.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import os
import tarfile
import zlib
from collections.abc import Iterator
from typing import IO

import numpy as np

from densenet_flax import config_keys

# DataFormatError and Example are part of this module's interface. Its
# examples: key 'row00017' (CSV row) or 'train/angry/x.jpg' (folder release);
# split train | public_test | private_test; image [48, 48, 1] uint8; label in
# CSV id order.
from densenet_flax.data.sources import (
  IMAGE_SUFFIXES,
  DataFormatError,
  Example,
  check_utf8,
  dict_rows,
)
from densenet_flax.data.sources import visible as _visible

IMAGE_SIZE = 48
NUM_PIXELS = IMAGE_SIZE * IMAGE_SIZE
# CSV id order: 0 Angry, 1 Disgust, 2 Fear, 3 Happy, 4 Sad, 5 Surprise, 6 Neutral.
EMOTIONS = ('angry', 'disgust', 'fear', 'happy', 'sad', 'surprise', 'neutral')
# CSV `Usage` value -> split name.
USAGE_TO_SPLIT = {
  'Training': 'train',
  'PublicTest': 'public_test',
  'PrivateTest': 'private_test',
}
SPLITS = tuple(USAGE_TO_SPLIT.values())

CSV_NAME = 'fer2013.csv'
TAR_NAME = 'fer2013.tar.gz'
ICML_NAME = 'icml_face_data.csv'
FOLDER_SPLITS = ('train', 'test')

# The releases that keep the CSV row order (FER+ joins on it).
CSV_RELEASES_TEXT = f"""\
  {CSV_NAME}       from https://www.kaggle.com/c/challenges-in-representation-learning-facial-expression-recognition-challenge/data
  {TAR_NAME}    the same file as the competition ships it (read without extracting)
  {ICML_NAME} the same rows, from the same page
"""

MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
FER2013 needs a Kaggle login, so it is downloaded by hand. Put ONE of these in
the manual directory (by default ~/tensorflow_datasets/downloads/manual/, or
the --manual_dir / config.manual_dir you pass):

{CSV_RELEASES_TEXT}\
  train/ and test/     the folder release (https://www.kaggle.com/datasets/msambare/fer2013):
                       train/<class>/*.jpg, test/<class>/*.jpg
"""


# --- CSV releases ----------------------------------------------------------


def parse_pixels(text: str, where: str, size: int = IMAGE_SIZE) -> np.ndarray:
  """'p0 p1 ... p2303' -> [size, size, 1] uint8, or a DataFormatError at `where`."""
  tokens = text.split()
  if len(tokens) != size * size:
    raise DataFormatError(
      f'{where}: pixels has {len(tokens)} values; expected {size * size} '
      f'({size}x{size}) space-separated integers 0-255'
    )
  bad = next((t for t in tokens if not _is_count(t)), None)
  if bad is not None:
    what = (
      f'{bad} is out of range'
      if bad[:1] == '-' and _is_count(bad[1:])
      else f'{bad!r} is not an integer'
    )
    raise DataFormatError(
      f'{where}: pixel value {what}; expected integers 0-255'
    )
  values = np.array(tokens, dtype=np.int64)
  if values.max() > 255:
    raise DataFormatError(
      f'{where}: pixel value {values.max()} is out of range; expected '
      f'integers 0-255'
    )
  return values.astype(np.uint8).reshape(size, size, 1)


def _is_count(text: str) -> bool:
  """A non-negative integer in plain ASCII digits ('٣' and '+3' are not)."""
  return text.isascii() and text.isdigit()


def split_of_usage(text: str, where: str) -> str:
  """The split of a `Usage` value (fer2013.csv, fer2013new.csv), or an error."""
  usage = text.strip()
  if usage not in USAGE_TO_SPLIT:
    raise DataFormatError(
      f'{where}: unknown Usage {usage!r}; expected one of '
      f'{", ".join(USAGE_TO_SPLIT)}'
    )
  return USAGE_TO_SPLIT[usage]


def read_fer_csv(stream: IO[str], source: str) -> Iterator[Example]:
  """Rows of fer2013.csv / icml_face_data.csv, in file order."""
  rows = dict_rows(stream, source, ('emotion', 'pixels', 'Usage'))
  for index, (where, row) in enumerate(rows):
    split = split_of_usage(row['Usage'], where)
    label_text = row['emotion'].strip()
    if not _is_count(label_text) or int(label_text) >= len(EMOTIONS):
      raise DataFormatError(
        f'{where}: unknown emotion id {label_text!r}; expected an integer '
        f'0-{len(EMOTIONS) - 1} ({", ".join(EMOTIONS)})'
      )
    yield Example(
      key=f'row{index:05d}',
      split=split,
      image=parse_pixels(row['pixels'], where),
      label=int(label_text),
    )


def _open_tar_csv(path: str) -> tuple[tarfile.TarFile, IO[str], str]:
  archive = tarfile.open(path, 'r:*')
  members = [
    m
    for m in archive.getmembers()
    if m.isfile() and os.path.basename(m.name) == CSV_NAME
  ]
  if not members:
    archive.close()
    raise DataFormatError(f'{path}: no {CSV_NAME} inside the archive')
  stream = io.TextIOWrapper(
    archive.extractfile(members[0]), encoding='utf-8', newline=''
  )
  return archive, stream, f'{path}:{members[0].name}'


def find_csv_source(manual_dir: str) -> str | None:
  """The first CSV-like release present in manual_dir, or None."""
  for name in (CSV_NAME, TAR_NAME, ICML_NAME):
    path = os.path.join(manual_dir, name)
    if os.path.isfile(path):
      return path
  return None


def read_csv_source(path: str) -> Iterator[Example]:
  """Examples of fer2013.csv, fer2013.tar.gz or icml_face_data.csv, in row order."""
  if path.endswith(('.tar.gz', '.tgz', '.tar')):
    try:
      archive, stream, source = _open_tar_csv(path)
      with archive, stream:
        yield from read_fer_csv(stream, source)
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
      raise DataFormatError(
        f'{path}: unreadable archive ({e}); expected the '
        f"competition's {TAR_NAME}"
      ) from None
  else:
    with open_text_csv(path) as stream:
      yield from read_fer_csv(stream, path)


# Leading bytes of files that are not text, and what to do about them.
_BINARY_MAGIC = {
  b'\x1f\x8b': f'gzip-compressed: decompress it (or, if it is the '
  f'competition archive, name it {TAR_NAME})',
  b'PK\x03\x04': 'a zip archive: extract the CSV from it',
  b'BZh': 'bzip2-compressed: decompress it',
  b'\xfd7zXZ': 'xz-compressed: decompress it',
}


def open_text_csv(path: str) -> IO[str]:
  """`path` opened as UTF-8 CSV text; a compressed file is named as one."""
  with open(path, 'rb') as f:
    head = f.read(8)
  for magic, advice in _BINARY_MAGIC.items():
    if head.startswith(magic):
      raise DataFormatError(
        f'{path}: the file is {advice}; expected a plain-text CSV'
      )
  check_utf8(path)
  return open(path, newline='', encoding='utf-8')


# --- the folder release ------------------------------------------------------

# Alphabetical folder names -> CSV ids (the folder order is NOT the id order).
FOLDER_TO_LABEL = {name: i for i, name in enumerate(EMOTIONS)}
PREFIX_TO_SPLIT = {
  f'{usage}_': split for usage, split in USAGE_TO_SPLIT.items()
}
_FOLDER_ALLOWS = {'train': ('train',), 'test': ('public_test', 'private_test')}


def has_folder_release(manual_dir: str) -> bool:
  return all(os.path.isdir(os.path.join(manual_dir, s)) for s in FOLDER_SPLITS)


def read_folder_release(manual_dir: str) -> Iterator[Example]:
  """Examples of train/<class>/* and test/<class>/*, in sorted path order."""
  from PIL import (
    Image,
  )  # pillow comes with matplotlib; only this reader needs it

  found = 0
  for top in FOLDER_SPLITS:
    top_dir = os.path.join(manual_dir, top)
    for class_name in _visible(top_dir):
      class_dir = os.path.join(top_dir, class_name)
      if not os.path.isdir(class_dir):
        raise DataFormatError(
          f'{class_dir}: expected only class folders in {top_dir}'
        )
      if class_name.lower() not in FOLDER_TO_LABEL:
        raise DataFormatError(
          f'{class_dir}: unknown class folder {class_name!r}; expected one '
          f'of {", ".join(sorted(FOLDER_TO_LABEL))}'
        )
      for file_name in _visible(class_dir):
        path = os.path.join(class_dir, file_name)
        if not file_name.lower().endswith(IMAGE_SUFFIXES):
          raise DataFormatError(
            f'{path}: not an image; expected {"/".join(IMAGE_SUFFIXES)} '
            f'files named Training_*, PublicTest_* or PrivateTest_*'
          )
        split = next(
          (s for p, s in PREFIX_TO_SPLIT.items() if file_name.startswith(p)),
          None,
        )
        if split is None or split not in _FOLDER_ALLOWS[top]:
          raise DataFormatError(
            f'{path}: the file name does not say its split; expected a '
            f'{" or ".join(_prefixes(top))} prefix in {top}/'
          )
        try:
          with Image.open(path) as img:
            img = img.convert('L')
            pixels = np.asarray(img, dtype=np.uint8)
        except (OSError, ValueError) as e:
          raise DataFormatError(f'{path}: unreadable image ({e})') from None
        if pixels.shape != (IMAGE_SIZE, IMAGE_SIZE):
          raise DataFormatError(
            f'{path}: image is {pixels.shape[1]}x{pixels.shape[0]}; '
            f'expected {IMAGE_SIZE}x{IMAGE_SIZE}'
          )
        key = f'{top}/{class_name}/{file_name}'
        found += 1
        yield Example(
          key=key,
          split=split,
          image=pixels[..., None],
          label=FOLDER_TO_LABEL[class_name.lower()],
          file=key,
        )
  if not found:
    raise DataFormatError(
      f'{manual_dir}: the folder release has no images; '
      f'expected train/<class>/*.jpg and test/<class>/*.jpg'
    )


def _prefixes(top: str) -> list[str]:
  return [p for p, s in PREFIX_TO_SPLIT.items() if s in _FOLDER_ALLOWS[top]]


# --- any release ---------------------------------------------------------------


def find_release(manual_dir: str) -> str:
  """Path of the release to read: a CSV source, else the folder release."""
  csv_path = find_csv_source(manual_dir)
  if csv_path:
    return csv_path
  if has_folder_release(manual_dir):
    return manual_dir
  looked = [
    os.path.join(manual_dir, n) for n in (CSV_NAME, TAR_NAME, ICML_NAME)
  ]
  looked += [os.path.join(manual_dir, s) + os.sep for s in FOLDER_SPLITS]
  raise FileNotFoundError(
    f'No FER2013 data in {manual_dir}; looked for:\n  '
    + '\n  '.join(looked)
    + '\n\n'
    + MANUAL_DOWNLOAD_INSTRUCTIONS
  )


def read_release(path: str) -> dict[str, list[Example]]:
  """All examples of a release, grouped by split (all rows validated first)."""
  reader = (
    read_folder_release(path) if os.path.isdir(path) else read_csv_source(path)
  )
  by_split: dict[str, list[Example]] = {s: [] for s in SPLITS}
  for example in reader:
    by_split[example.split].append(example)
  return by_split


# --- FER+ ----------------------------------------------------------------------

FERPLUS_NAME = 'fer2013new.csv'
# fer2013new.csv vote columns, in file order.
FERPLUS_EMOTIONS = (
  'neutral',
  'happiness',
  'surprise',
  'sadness',
  'anger',
  'disgust',
  'fear',
  'contempt',
)
FERPLUS_VOTE_COLUMNS = FERPLUS_EMOTIONS + ('unknown', 'NF')


@dataclasses.dataclass(frozen=True)
class Votes:
  where: str
  split: str
  image_name: str  # '' for rows that are not faces
  votes: np.ndarray  # [10] int32: 8 emotions, unknown, NF


def read_ferplus_votes(path: str) -> Iterator[Votes]:
  """Rows of fer2013new.csv (microsoft/FERPlus), in file order."""
  with open_text_csv(path) as stream:
    required = ('Usage', 'Image name') + FERPLUS_VOTE_COLUMNS
    for where, row in dict_rows(stream, path, required):
      split = split_of_usage(row['Usage'], where)
      votes = []
      for column in FERPLUS_VOTE_COLUMNS:
        text = row[column].strip()
        if not _is_count(text):
          raise DataFormatError(
            f'{where}: {column} vote count {text!r} is not a non-negative '
            f'integer'
          )
        votes.append(int(text))
      yield Votes(
        where=where,
        split=split,
        image_name=row['Image name'].strip(),
        votes=np.array(votes, np.int32),
      )


def ferplus_majority(votes: np.ndarray) -> int | None:
  """The FER+ "majority" label: emotion index 0-7, or None when there is none.

  As microsoft/FERPlus: votes of 1 are dropped as outliers, then the top
  class must hold more than half of the remaining votes and be an emotion
  (not 'unknown' or 'NF'). The same rows and class as
  `ferplus_target(votes, 'majority')`.
  """
  target = ferplus_target(votes, 'majority')
  return None if target is None else int(np.argmax(target))


# The training-target modes of the FER+ paper (Barsoum et al. 2016,
# arXiv:1608.01041), named as in microsoft/FERPlus src/ferplus.py:
#   majority      one-hot of the majority emotion (the paper's MV)
#   probability   one label drawn from the vote distribution at every step (PLD)
#   crossentropy  the vote distribution as a soft target (CEL)
#   multi_target  any emotion with >= 30% of the votes counts as right (MT)
FERPLUS_LABEL_MODES = config_keys.LABEL_MODES


def ferplus_target(votes: np.ndarray, mode: str) -> np.ndarray | None:
  """The processed FER+ vote distribution of one row, as microsoft/FERPlus.

  votes: the 10 counts (8 emotions, unknown, NF). Returns [8] float64 over
  FERPLUS_EMOTIONS summing to 1, or None when the row does not train in
  `mode` (`_process_data` gives 'unknown', or its top entry is unknown/NF).
  For 'probability' this is the distribution the label is drawn from; for
  'multi_target' the classes with a non-zero entry are the accepted ones.
  """
  processed = _ferplus_process(votes, mode)
  if processed is None or processed.sum() <= 0:
    return None
  if int(np.argmax(processed)) >= len(FERPLUS_EMOTIONS):
    return None
  emotions = processed[: len(FERPLUS_EMOTIONS)]
  return emotions / emotions.sum()


def _ferplus_process(votes: np.ndarray, mode: str) -> np.ndarray | None:
  """microsoft/FERPlus `_process_data` before normalising; None = 'unknown'."""
  if mode not in FERPLUS_LABEL_MODES:
    raise ValueError(
      f'Unknown FER+ label mode {mode!r}; expected one of '
      f'{", ".join(FERPLUS_LABEL_MODES)}'
    )
  raw = np.asarray(votes, np.float64).reshape(-1)
  if raw.shape != (len(FERPLUS_VOTE_COLUMNS),):
    raise ValueError(
      f'FER+ votes have {raw.size} counts; expected '
      f'{len(FERPLUS_VOTE_COLUMNS)} '
      f'({", ".join(FERPLUS_VOTE_COLUMNS)})'
    )
  raw = np.where(raw > 1, raw, 0.0)  # single votes are outliers
  total = raw.sum()
  if total <= 0:
    return None
  kept = np.zeros_like(raw)
  if mode == 'majority':
    top = int(np.argmax(raw))
    if raw[top] <= 0.5 * total:
      return None
    kept[top] = raw[top]
  elif mode in ('probability', 'crossentropy'):
    # Take the classes with the most votes, ties together, until 75% of the
    # votes or 3 classes are in; 'unknown'/'NF' ends it (and is left out
    # when an emotion was taken before it).
    taken_sum, count, valid = 0.0, 0, True
    while taken_sum < 0.75 * total and count < 3 and valid:
      top = raw.max()
      for i in np.flatnonzero(raw == top):
        kept[i] = top
        raw[i] = 0.0
        taken_sum += top
        count += 1
        if i >= len(FERPLUS_EMOTIONS):
          valid = False
          if kept.sum() > top:
            kept[i] = 0.0
            count -= 1
          break
    if kept.sum() <= 0.5 * total or count > 3:
      return None
  else:  # multi_target
    kept = np.where(raw >= 0.3 * total, raw, 0.0)
    if kept.sum() <= 0.5 * total:
      return None
  return kept


def ferplus_top_vote(votes: np.ndarray) -> int:
  """The emotion (0-7) with the most raw votes, the first on a tie.

  What the builder stores as `label` of a row without a majority emotion; it
  is NOT a label of that row (see `ferplus_target`).
  """
  return int(np.argmax(np.asarray(votes)[: len(FERPLUS_EMOTIONS)]))


def join_ferplus(fer_path: str, votes_path: str):
  """Pairs FER2013 rows with FER+ vote rows (same order) and labels them.

  Returns (rows by split, excluded, no_majority):
    rows: (Example, votes [10], label, has_majority) of every face, in file
      order. label is the majority emotion where has_majority; otherwise the
      top emotion vote (`ferplus_top_vote`), which is not a label.
    excluded: {split: Counter({'not_a_face': n})}, rows that are not faces
      (empty image name), left out.
    no_majority: {split: n}, the faces kept without a majority emotion (tied,
      or 'unknown'/'NF' on top); only the soft-target modes train on them.
  """
  by_split: dict[str, list[tuple[Example, np.ndarray, int, bool]]] = {
    s: [] for s in SPLITS
  }
  excluded = {s: collections.Counter() for s in SPLITS}
  no_majority = {s: 0 for s in SPLITS}
  fer_rows = read_csv_source(fer_path)
  vote_rows = read_ferplus_votes(votes_path)
  for example, votes in _zip_exact(fer_rows, vote_rows, fer_path, votes_path):
    if example.split != votes.split:
      raise DataFormatError(
        f'{votes.where}: Usage {votes.split} does not match {fer_path} '
        f'{example.key} ({example.split}); fer2013new.csv must list the rows of '
        f'fer2013.csv in the same order'
      )
    if not votes.image_name:
      excluded[example.split]['not_a_face'] += 1
      continue
    label = ferplus_majority(votes.votes)
    if label is None:
      no_majority[example.split] += 1
      by_split[example.split].append(
        (example, votes.votes, ferplus_top_vote(votes.votes), False)
      )
    else:
      by_split[example.split].append((example, votes.votes, label, True))
  return by_split, excluded, no_majority


def _zip_exact(a, b, a_name, b_name):
  count = 0
  sentinel = object()
  a, b = iter(a), iter(b)
  while True:
    x, y = next(a, sentinel), next(b, sentinel)
    if x is sentinel and y is sentinel:
      return
    if x is sentinel or y is sentinel:
      longer = b_name if x is sentinel else a_name
      raise DataFormatError(
        f'{a_name} and {b_name} have different row counts: {longer} has '
        f'more than {count} rows; FER+ labels must match fer2013.csv row '
        f'for row'
      )
    count += 1
    yield x, y
