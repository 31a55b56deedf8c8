"""Reader for RAF-DB's basic release: aligned 100x100 RGB faces, 7 emotions.

The Real-world Affective Faces Database (Li, Deng and Du, CVPR 2017) is
handed out by its authors on request. Its basic release labels each image in
one text file, `EmoLabel/list_patition_label.txt`, with lines such as
`train_00001.jpg 5` and `test_0001.jpg 7`: the name's prefix gives the split
(12,271 train, 3,068 test) and the number the emotion, 1-7 in the file's own
order (1 surprise ... 7 neutral), which becomes id 0-6 here. The aligned face
of `train_00001.jpg` is `Image/aligned/train_00001_aligned.jpg`.

Every line is validated before any image is read; a malformed line, a
label out of range, a duplicate, or a listed image that is missing or
unreadable is a DataFormatError naming the file and line (unreadable images
are skipped and counted instead under skip_unreadable=True).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator

from densenet_flax.data.sources import DataFormatError, Example, Skipped
from densenet_flax.data import sources

# File label 1..7 -> id 0..6.
CLASS_NAMES = (
  'surprise',
  'fear',
  'disgust',
  'happiness',
  'sadness',
  'anger',
  'neutral',
)
SPLITS = ('train', 'test')
IMAGE_SIZE = 100  # stored height = width; other sizes are resized to it
LABEL_FILE = os.path.join('EmoLabel', 'list_patition_label.txt')
IMAGE_DIR = os.path.join('Image', 'aligned')
# The download unpacks to basic/ (with compound/ beside it).
RELEASE_FOLDER = 'basic'

EXPECTED_TREE = """\
  <manual_dir>/                  (or <manual_dir>/basic/)
    EmoLabel/
      list_patition_label.txt  lines 'train_00001.jpg 5', 'test_0001.jpg 7'
    Image/
      aligned/                   (extract Image/aligned.zip here)
        train_00001_aligned.jpg  100x100 RGB aligned faces
        test_0001_aligned.jpg
        ...
"""

MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
RAF-DB is handed out by its authors on request
(http://www.whdeng.cn/RAF/model1.html), so it is downloaded by hand. Put its
basic release in the manual directory (by default
~/tensorflow_datasets/downloads/manual/, or the --manual_dir /
config.manual_dir you pass), laid out as:

{EXPECTED_TREE}
Labels 1-7 are surprise, fear, disgust, happiness, sadness, anger, neutral.
"""


@dataclasses.dataclass(frozen=True)
class LabelLine:
  where: str  # 'path line n'
  split: str
  name: str  # 'train_00001.jpg'
  label: int  # 0-6


def find_release(directory: str) -> str:
  """The release root (`directory` or its basic/ folder), or an error.

  Raises FileNotFoundError when `directory` does not exist, and
  DataFormatError showing the expected tree when neither holds the label
  file and the aligned images.
  """
  if not os.path.isdir(directory):
    raise FileNotFoundError(
      f'{directory} does not exist\n\n{MANUAL_DOWNLOAD_INSTRUCTIONS}'
    )
  for root in (directory, os.path.join(directory, RELEASE_FOLDER)):
    if os.path.isfile(os.path.join(root, LABEL_FILE)):
      images = os.path.join(root, IMAGE_DIR)
      if not os.path.isdir(images):
        zipped = os.path.isfile(images + '.zip')
        raise DataFormatError(
          f'{images} is missing'
          + ('; extract aligned.zip there' if zipped else '')
          + f'; expected the RAF-DB basic release laid out as:\n\n'
          f'{EXPECTED_TREE}'
        )
      return root
  raise DataFormatError(
    f'{directory}: no {LABEL_FILE} (nor {RELEASE_FOLDER}/{LABEL_FILE}); '
    f'expected the RAF-DB basic release laid out as:\n\n{EXPECTED_TREE}'
  )


def read_labels(root: str) -> list[LabelLine]:
  """Every line of the label file, validated, in file order."""
  path = os.path.join(root, LABEL_FILE)
  try:
    with open(path, encoding='utf-8-sig') as f:  # a BOM is not a name
      lines = f.read().splitlines()
  except UnicodeDecodeError as e:
    raise DataFormatError(
      f"{path}: not UTF-8 text ({e.reason}); expected lines 'train_00001.jpg 5'"
    ) from None
  result, seen = [], {}
  for number, line in enumerate(lines, 1):
    where = f'{path} line {number}'
    if not line.strip():
      continue
    fields = line.split()
    if len(fields) != 2:
      raise DataFormatError(
        f"{where}: {line!r} has {len(fields)} fields; expected '<image> "
        f"<label>' as in 'train_00001.jpg 5'"
      )
    name, label_text = fields
    split = name.split('_', 1)[0]
    if split not in SPLITS or not sources.is_image_name(name):
      raise DataFormatError(
        f'{where}: image name {name!r} does not say its split; expected '
        f"'train_<n>.jpg' or 'test_<n>.jpg'"
      )
    if not (label_text.isascii() and label_text.isdigit()) or not (
      1 <= int(label_text) <= len(CLASS_NAMES)
    ):
      raise DataFormatError(
        f'{where}: label {label_text!r} is out of range; expected an integer '
        f'1-{len(CLASS_NAMES)} ({", ".join(CLASS_NAMES)})'
      )
    if name in seen:
      raise DataFormatError(
        f'{where}: {name} is listed again (first on line {seen[name]}); '
        f'expected each image once'
      )
    seen[name] = number
    result.append(LabelLine(where, split, name, int(label_text) - 1))
  if not result:
    raise DataFormatError(
      f"{path}: no labels; expected lines such as 'train_00001.jpg 5'"
    )
  return result


def aligned_file(name: str) -> str:
  """'train_00001.jpg' -> 'Image/aligned/train_00001_aligned.jpg'."""
  stem, suffix = os.path.splitext(name)
  return os.path.join(IMAGE_DIR, f'{stem}_aligned{suffix}')


def read_split(
  root: str,
  split: str,
  *,
  skip_unreadable: bool = False,
  skipped: Skipped | None = None,
  labels: list[LabelLine] | None = None,
) -> Iterator[Example]:
  """The examples of `split` in label-file order: [100, 100, 3] uint8 RGB.

  Images of another size are resized to 100x100 and grayscale ones turned
  to RGB. `labels` (from read_labels) saves re-reading the label file;
  `skipped` receives what skip_unreadable left out.
  """
  if split not in SPLITS:
    raise ValueError(f'Unknown RAF-DB split {split!r}; expected {SPLITS}')
  skipped = Skipped() if skipped is None else skipped
  for line in read_labels(root) if labels is None else labels:
    if line.split != split:
      continue
    file = aligned_file(line.name)
    image = sources.read_rgb(
      os.path.join(root, file),
      where=line.where,
      file=file,
      split=split,
      skip_unreadable=skip_unreadable,
      skipped=skipped,
    )
    if image is None:
      continue
    yield Example(
      key=line.name,
      split=split,
      image=sources.resized(image, IMAGE_SIZE),
      label=line.label,
      file=file,
    )
  skipped.log('RAF-DB', split)
