"""Reader for AffectNet (Mollahosseini et al. 2017), either of its two releases.

AffectNet is handed out by its authors on request, in one of two releases
that users often confuse; `find_release` tells them apart:

  - the original release: `Manually_Annotated_Images/<dir>/<file>.jpg` (whole
    photos of any size) and `Manually_Annotated_file_lists/training.csv` and
    `validation.csv`, one row per image with its face box, 68 landmarks,
    expression code, valence and arousal. The face `img[y:y+h, x:x+w]`
    (clipped to the photo) is cropped and resized to 224x224.
  - the "npy" release: `train_set/` and `val_set/`, each with
    `images/<id>.jpg` (faces already cropped) and `annotations/<id>_exp.npy`
    (the code, stored as a number or as a string like '3'), `_val.npy`,
    `_aro.npy` and `_lnd.npy`.

Splits: `train`, and `test`, which is the official validation set (500
images per class): AffectNet's own test set was never released, so every
paper reports its "test" accuracy on this set; a validation split for model
selection must be carved out of `train`.

Expression codes: 0 neutral, 1 happiness, 2 sadness, 3 surprise, 4 fear,
5 disgust, 6 anger, 7 contempt, 8 none, 9 uncertain, 10 no-face. AffectNet-8
keeps codes 0-7 and AffectNet-7 codes 0-6, as the published codebases do.
Rows of other codes and rows with face_width < 0 are skipped and counted by
reason (SKIP_REASONS) in a `Skipped`. A code outside 0-10, a malformed row or
annotation, a CSV without the documented columns, or a listed image that is
missing or unreadable is a DataFormatError naming the file and line (images
are skipped and counted instead under skip_unreadable=True).

Each example keeps `valence`, `arousal` (float32) and `landmarks` ([68, 2]
float32 x, y in the stored photo's pixels; NaN where the release lacks them).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator

import numpy as np

from densenet_flax.data import sources
from densenet_flax.data.sources import DataFormatError, Example, Skipped

# Expression code -> class id, for codes 0-7.
CLASS_NAMES = (
  'neutral',
  'happiness',
  'sadness',
  'surprise',
  'fear',
  'disgust',
  'anger',
  'contempt',
)
NUM_CODES = 11  # 8 none, 9 uncertain, 10 no-face are not emotions
CLASS_COUNTS = (7, 8)  # AffectNet-7, AffectNet-8
SPLITS = ('train', 'test')  # test = the official validation set
IMAGE_SIZE = 224  # stored height = width
NUM_LANDMARKS = 68

# Why a row is skipped (by rule, not by fault): the counted reasons.
SKIP_REASONS = {
  7: 'code_7_contempt',  # AffectNet-7 only
  8: 'code_8_none',
  9: 'code_9_uncertain',
  10: 'code_10_no_face',
}
FACE_WIDTH_NEGATIVE = 'face_width_negative'

ORIGINAL = 'original'
NPY = 'npy'
# The original release.
LIST_DIR = 'Manually_Annotated_file_lists'
IMAGE_DIR = 'Manually_Annotated_Images'
CSV_OF_SPLIT = {'train': 'training.csv', 'test': 'validation.csv'}
COLUMNS = (
  'subDirectory_filePath',
  'face_x',
  'face_y',
  'face_width',
  'face_height',
  'facial_landmarks',
  'expression',
  'valence',
  'arousal',
)
# The npy release.
FOLDER_OF_SPLIT = {'train': 'train_set', 'test': 'val_set'}
EXPRESSION_SUFFIX = '_exp.npy'
EXTRA_SUFFIXES = {
  'valence': '_val.npy',
  'arousal': '_aro.npy',
  'landmarks': '_lnd.npy',
}

EXPECTED_TREE = f"""\
  the original release:
    <manual_dir>/
      {LIST_DIR}/
        training.csv      {','.join(COLUMNS[:3])},...,expression,valence,arousal
        validation.csv
      {IMAGE_DIR}/
        <dir>/<file>.jpg  as named by subDirectory_filePath

  or the "npy" release:
    <manual_dir>/
      train_set/
        images/<id>.jpg
        annotations/<id>_exp.npy, <id>_val.npy, <id>_aro.npy, <id>_lnd.npy
      val_set/
        images/ and annotations/ as in train_set/
"""

MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
AffectNet is handed out by its authors on request
(http://mohammadmahoor.com/affectnet/), so it is downloaded by hand. Put ONE
of its two releases in the manual directory (by default
~/tensorflow_datasets/downloads/manual/, or the --manual_dir /
config.manual_dir you pass):

{EXPECTED_TREE}
Splits: train, and test = the official validation set (validation.csv or
val_set/), which every paper reports as its test set.
"""


@dataclasses.dataclass(frozen=True)
class Release:
  """An AffectNet release found on disk: kind ORIGINAL or NPY, and its root."""

  kind: str
  root: str


def class_names(num_classes: int) -> tuple[str, ...]:
  """The class names of AffectNet-7 or AffectNet-8, in id order."""
  if num_classes not in CLASS_COUNTS:
    raise ValueError(
      f'AffectNet has 7 or 8 classes (AffectNet-7, AffectNet-8); got '
      f'{num_classes}'
    )
  return CLASS_NAMES[:num_classes]


def find_release(directory: str) -> Release:
  """The release in `directory`, or an error that shows the expected trees.

  FileNotFoundError when `directory` does not exist; DataFormatError when it
  holds neither release, a release with parts missing, or both releases.
  """
  if not os.path.isdir(directory):
    raise FileNotFoundError(
      f'{directory} does not exist\n\n{MANUAL_DOWNLOAD_INSTRUCTIONS}'
    )
  original = [
    p
    for p in (LIST_DIR, IMAGE_DIR)
    if os.path.isdir(os.path.join(directory, p))
  ]
  npy = [
    p
    for p in FOLDER_OF_SPLIT.values()
    if os.path.isdir(os.path.join(directory, p))
  ]
  if original and npy:
    raise DataFormatError(
      f'{directory} holds two AffectNet releases: the original '
      f'({", ".join(original)}) and the npy release ({", ".join(npy)}); '
      f'expected one of them. Move the other elsewhere:\n\n{EXPECTED_TREE}'
    )
  if original:
    wanted = [os.path.join(LIST_DIR, name) for name in CSV_OF_SPLIT.values()]
    wanted.append(IMAGE_DIR + os.sep)
  elif npy:
    wanted = [
      os.path.join(folder, part) + os.sep
      for folder in FOLDER_OF_SPLIT.values()
      for part in ('images', 'annotations')
    ]
  else:
    raise DataFormatError(
      f'{directory}: no AffectNet release (neither {LIST_DIR}/ nor '
      f'train_set/); expected:\n\n{EXPECTED_TREE}'
    )
  missing = [
    w for w in wanted if not os.path.exists(os.path.join(directory, w))
  ]
  if missing:
    kind = 'original' if original else 'npy'
    raise DataFormatError(
      f'{directory}: the {kind} AffectNet release lacks '
      f'{", ".join(missing)}; expected:\n\n{EXPECTED_TREE}'
    )
  return Release(ORIGINAL if original else NPY, directory)


def read_split(
  release: Release,
  split: str,
  *,
  num_classes: int = 8,
  skip_unreadable: bool = False,
  skipped: Skipped | None = None,
) -> Iterator[Example]:
  """The examples of `split`: [224, 224, 3] uint8 RGB faces, labels 0-7/0-6.

  All labels of the split are read and checked before the first image is
  decoded. `skipped` receives the rows left out by rule and, under
  skip_unreadable, the images that could not be read.
  """
  if split not in SPLITS:
    raise ValueError(f'Unknown AffectNet split {split!r}; expected {SPLITS}')
  class_names(num_classes)  # checks num_classes
  skipped = Skipped() if skipped is None else skipped
  read = _read_original if release.kind == ORIGINAL else _read_npy
  yield from read(release.root, split, num_classes, skip_unreadable, skipped)
  skipped.log(f'AffectNet-{num_classes}', split)


def _skip_reason(code: int, num_classes: int) -> str | None:
  return SKIP_REASONS[code] if code >= num_classes else None


def _code(text: str, where: str) -> int:
  if not (text.isascii() and text.isdigit()) or int(text) >= NUM_CODES:
    raise DataFormatError(
      f'{where}: expression {text!r} is out of range; expected an integer '
      f'0-{NUM_CODES - 1} (0-7: {", ".join(CLASS_NAMES)}; 8 none, '
      f'9 uncertain, 10 no-face)'
    )
  return int(text)


def _number(text: str, where: str, column: str, kind=float):
  try:
    value = kind(text.strip())
  except ValueError:
    raise DataFormatError(
      f'{where}: {column} {text!r} is not a number; expected '
      f'{"an integer" if kind is int else "a number"}'
    ) from None
  if kind is float and not np.isfinite(value):
    raise DataFormatError(f'{where}: {column} is {text!r}; expected a number')
  return value


def _landmarks(values, where: str) -> np.ndarray:
  """x;y pairs (text or numbers) -> [68, 2] float32; NaN when empty."""
  if isinstance(values, str):
    fields = [v for v in values.strip().split(';') if v.strip()]
  else:
    fields = list(np.asarray(values).reshape(-1))
  if not fields:
    return np.full((NUM_LANDMARKS, 2), np.nan, np.float32)
  if len(fields) != 2 * NUM_LANDMARKS:
    raise DataFormatError(
      f'{where}: {len(fields)} landmark values; expected '
      f'{2 * NUM_LANDMARKS} ({NUM_LANDMARKS} x;y pairs separated by ";")'
    )
  try:
    points = np.array([float(v) for v in fields], np.float32)
  except ValueError as e:
    raise DataFormatError(
      f'{where}: a landmark is not a number ({e}); expected {NUM_LANDMARKS} '
      f'x;y pairs'
    ) from None
  return points.reshape(NUM_LANDMARKS, 2)


# --- the original release ----------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Row:
  where: str
  key: str  # subDirectory_filePath
  label: int
  box: tuple[int, int, int, int]  # x, y, w, h
  extras: dict


def _original_rows(
  root: str, split: str, num_classes: int, skipped: Skipped
) -> list[_Row]:
  path = os.path.join(root, LIST_DIR, CSV_OF_SPLIT[split])
  sources.check_utf8(path)
  rows, seen = [], {}
  with open(path, newline='', encoding='utf-8-sig') as stream:
    for where, row in sources.dict_rows(stream, path, COLUMNS):
      code = _code(row['expression'].strip(), where)
      key = row['subDirectory_filePath'].strip()
      file = os.path.join(IMAGE_DIR, key)
      reason = _skip_reason(code, num_classes)
      if reason is None:
        width = _number(row['face_width'], where, 'face_width', int)
        reason = FACE_WIDTH_NEGATIVE if width < 0 else None
      if reason is not None:
        skipped.add(split, reason, file)
        continue
      if not key:
        raise DataFormatError(
          f'{where}: subDirectory_filePath is empty; expected <dir>/<file>.jpg'
        )
      if key in seen:
        raise DataFormatError(
          f'{where}: {key} is listed again (first on line {seen[key]}); '
          f'expected each image once'
        )
      seen[key] = where.rsplit(' ', 1)[-1]
      box = (
        _number(row['face_x'], where, 'face_x', int),
        _number(row['face_y'], where, 'face_y', int),
        width,
        _number(row['face_height'], where, 'face_height', int),
      )
      extras = {
        'valence': np.float32(_number(row['valence'], where, 'valence')),
        'arousal': np.float32(_number(row['arousal'], where, 'arousal')),
        'landmarks': _landmarks(row['facial_landmarks'], where),
      }
      rows.append(_Row(where, key, code, box, extras))
  return rows


def _read_original(root, split, num_classes, skip_unreadable, skipped):
  for row in _original_rows(root, split, num_classes, skipped):
    file = os.path.join(IMAGE_DIR, row.key)
    image = sources.read_rgb(
      os.path.join(root, file),
      where=row.where,
      file=file,
      split=split,
      skip_unreadable=skip_unreadable,
      skipped=skipped,
    )
    if image is None:
      continue
    yield Example(
      key=row.key,
      split=split,
      image=sources.resized(_crop(image, row, file), IMAGE_SIZE),
      label=row.label,
      file=file,
      extras=row.extras,
    )


def _crop(image, row: _Row, file: str):
  """img[y:y+h, x:x+w] of a PIL image, clipped to it; an error if empty."""
  x, y, w, h = row.box
  width, height = image.size
  left, top = max(x, 0), max(y, 0)
  right, bottom = min(x + w, width), min(y + h, height)
  if right <= left or bottom <= top:
    raise DataFormatError(
      f'{row.where}: the face box x={x} y={y} w={w} h={h} holds no pixel of '
      f'{file} ({width}x{height}); expected a box inside the image'
    )
  return image.crop((left, top, right, bottom))


# --- the npy release ---------------------------------------------------------


def _id_order(image_id: str):
  """Numeric ids in numeric order ('2' < '10'), then the others by name."""
  return (0, int(image_id), '') if image_id.isdigit() else (1, 0, image_id)


def _load_npy(path: str) -> np.ndarray:
  try:
    return np.load(path, allow_pickle=False)
  except (OSError, ValueError, EOFError) as e:
    raise DataFormatError(
      f'{path}: unreadable .npy file ({e}); expected a NumPy array'
    ) from None


def _read_npy(root, split, num_classes, skip_unreadable, skipped):
  folder = FOLDER_OF_SPLIT[split]
  image_dir = os.path.join(root, folder, 'images')
  annotation_dir = os.path.join(root, folder, 'annotations')
  annotations = set(os.listdir(annotation_dir))
  # An extra a release has (any file of its kind) must be there for each id.
  extras_present = {
    name
    for name, suffix in EXTRA_SUFFIXES.items()
    if any(n.endswith(suffix) for n in annotations)
  }
  ids = []
  for name in sources.visible(image_dir):
    if not sources.is_image_name(name):
      raise DataFormatError(
        f'{os.path.join(image_dir, name)}: not an image; expected '
        f'{folder}/images/<id>.jpg'
      )
    ids.append((os.path.splitext(name)[0], name))
  if not ids:
    raise DataFormatError(
      f'{image_dir}: no images; expected {folder}/images/<id>.jpg'
    )
  kept = []
  for image_id, name in sorted(ids, key=lambda i: _id_order(i[0])):
    file = os.path.join(folder, 'images', name)
    exp_name = image_id + EXPRESSION_SUFFIX
    exp_path = os.path.join(annotation_dir, exp_name)
    if exp_name not in annotations:
      raise DataFormatError(
        f'{os.path.join(root, file)}: no annotation {exp_path}; expected '
        f'annotations/<id>{EXPRESSION_SUFFIX} for each images/<id>.jpg'
      )
    code = _npy_code(_load_npy(exp_path), exp_path)
    reason = _skip_reason(code, num_classes)
    if reason is not None:
      skipped.add(split, reason, file)
      continue
    kept.append((image_id, file, code))
  for image_id, file, code in kept:
    image = sources.read_rgb(
      os.path.join(root, file),
      where=os.path.join(root, file),
      file=file,
      split=split,
      skip_unreadable=skip_unreadable,
      skipped=skipped,
    )
    if image is None:
      continue
    yield Example(
      key=image_id,
      split=split,
      image=sources.resized(image, IMAGE_SIZE),
      label=code,
      file=file,
      extras=_npy_extras(annotation_dir, image_id, extras_present),
    )


def _text(item):
  """Bytes from an 'S' array as text; anything else as it is."""
  return item.decode('utf-8', 'replace') if isinstance(item, bytes) else item


def _npy_code(value: np.ndarray, where: str) -> int:
  """The code in an _exp.npy file: a number, or a string such as '3'."""
  if value.size != 1:
    return _code(repr(value), where)
  item = _text(value.item())
  if isinstance(item, float) and item.is_integer():
    item = int(item)
  return _code(str(item).strip(), where)


def _npy_extras(annotation_dir: str, image_id: str, present: set) -> dict:
  extras = {
    'valence': np.float32(np.nan),
    'arousal': np.float32(np.nan),
    'landmarks': np.full((NUM_LANDMARKS, 2), np.nan, np.float32),
  }
  for name in present:
    path = os.path.join(annotation_dir, image_id + EXTRA_SUFFIXES[name])
    if not os.path.isfile(path):
      raise DataFormatError(
        f'{path} is missing; expected it beside the other {name} '
        f'annotations ({EXTRA_SUFFIXES[name]} for each image)'
      )
    value = _load_npy(path)
    if name == 'landmarks':
      text = value.dtype.kind in 'US' and value.size == 1
      extras[name] = _landmarks(_text(value.item()) if text else value, path)
    else:
      if value.size != 1:
        raise DataFormatError(
          f'{path}: {value.size} values; expected one {name} number'
        )
      extras[name] = np.float32(_number(str(_text(value.item())), path, name))
  return extras
