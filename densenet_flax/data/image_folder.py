"""Reader for a class-folder dataset: `root/<split>/<class>/*.{jpg,jpeg,png}`.

The layout of TFDS's ImageFolder and of the FER codebases' loaders (POSTER
V2, DDAMFN). The folders say everything: split names are the folders of the
root, class names the folders of `train/`, sorted, with numeric names in
numeric order ('2' before '10'); every other split may use only those
classes. Images are decoded to RGB and keep their size.

`find_release` checks the whole tree from directory listings alone, without
decoding an image, so config checks can call it before any data is read; a
flat folder where class folders were expected, an empty class folder, a
class a split has but train/ lacks, or a stray file is a DataFormatError
naming the folder and showing the expected tree.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator

import numpy as np

from densenet_flax.data import sources
from densenet_flax.data.sources import DataFormatError, Example, Skipped

TRAIN = 'train'  # the split whose folders name the classes

EXPECTED_TREE = """\
  <root>/
    train/                 the training split; its folders name the classes
      <class>/             e.g. happy/ or 3/ (numeric names sort as numbers)
        <image>.jpg        .jpg, .jpeg or .png, any size
      ...
    test/                  any other split, named by its folder (test, val)
      <class>/             only classes that train/ has
        <image>.jpg
"""

MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
image_folder reads a dataset laid out as class folders inside split folders.
Pass its root as the manual directory (--manual_dir / config.manual_dir):

{EXPECTED_TREE}"""


@dataclasses.dataclass(frozen=True)
class FolderLayout:
  """What a class-folder root holds, found from directory listings alone.

  root: the absolute root. splits: split folder names, sorted.
  class_names: the folders of train/, in id order.
  files: {split: ((label, path relative to root), ...)} in sorted order.
  """

  root: str
  splits: tuple[str, ...]
  class_names: tuple[str, ...]
  files: dict = dataclasses.field(repr=False, compare=False)


def class_order(name: str):
  """Sort key: numeric names as numbers first ('2' < '10'), then by name."""
  return (0, int(name), '') if name.isdigit() else (1, 0, name)


def _flat(directory: str, image: str, expected: str) -> DataFormatError:
  return DataFormatError(
    f'{directory} holds images ({image}) directly; expected {expected}. '
    f'Lay the files out as:\n\n{EXPECTED_TREE}'
  )


def _class_folders(split_dir: str) -> list[str]:
  """The class folders of a split folder, checked to hold only folders."""
  names = sources.visible(split_dir)
  images = [n for n in names if sources.is_image_name(n)]
  if images:
    raise _flat(
      split_dir,
      images[0],
      f'class folders: {split_dir}/<class>/{images[0]}',
    )
  stray = [n for n in names if not os.path.isdir(os.path.join(split_dir, n))]
  if stray:
    raise DataFormatError(
      f'{os.path.join(split_dir, stray[0])}: not a folder; expected only '
      f'class folders in {split_dir}:\n\n{EXPECTED_TREE}'
    )
  if not names:
    raise DataFormatError(
      f'{split_dir} holds no class folders; expected '
      f'{split_dir}/<class>/*.jpg:\n\n{EXPECTED_TREE}'
    )
  return names


def _images(class_dir: str) -> list[str]:
  """The image names of a class folder, checked: no stray file, not empty."""
  names = sources.visible(class_dir)
  for name in names:
    if not sources.is_image_name(name) or os.path.isdir(
      os.path.join(class_dir, name)
    ):
      raise DataFormatError(
        f'{os.path.join(class_dir, name)}: not an image file; expected only '
        f'{", ".join(sources.IMAGE_SUFFIXES)} files in the class folder '
        f'{class_dir}'
      )
  if not names:
    raise DataFormatError(
      f'{class_dir}: empty class folder; expected '
      f'{", ".join(sources.IMAGE_SUFFIXES)} images in it (or remove it)'
    )
  return names


def find_release(root: str) -> FolderLayout:
  """The splits, classes and image files under `root`; decodes no image.

  Raises FileNotFoundError when `root` does not exist and DataFormatError,
  showing the expected tree, when it is not laid out as
  root/<split>/<class>/*.{jpg,jpeg,png}.
  """
  if not os.path.isdir(root):
    raise FileNotFoundError(
      f'{root} does not exist\n\n{MANUAL_DOWNLOAD_INSTRUCTIONS}'
    )
  root = os.path.abspath(root)
  names = sources.visible(root)
  images = [n for n in names if sources.is_image_name(n)]
  if images:
    raise _flat(
      root, images[0], f'{root}/<split>/<class>/<image>, e.g. train/happy/'
    )
  splits = [n for n in names if os.path.isdir(os.path.join(root, n))]
  classes = {s: _class_folders(os.path.join(root, s)) for s in splits}
  if TRAIN not in classes:
    raise DataFormatError(
      f'{root}: no {TRAIN}/ folder (found {", ".join(splits) or "none"}); '
      f'expected the training split in {root}/{TRAIN}/<class>/:\n\n'
      f'{EXPECTED_TREE}'
    )
  class_names = tuple(sorted(classes[TRAIN], key=class_order))
  label_of = {name: i for i, name in enumerate(class_names)}
  files = {}
  for split in splits:
    found = []
    for class_name in sorted(classes[split], key=class_order):
      class_dir = os.path.join(root, split, class_name)
      if class_name not in label_of:
        raise DataFormatError(
          f'{class_dir}: class {class_name!r} is not a class of '
          f'{TRAIN}/ ({", ".join(class_names)}); every split must use the '
          f"training split's classes"
        )
      found += [
        (label_of[class_name], f'{split}/{class_name}/{name}')
        for name in _images(class_dir)
      ]
    files[split] = tuple(found)
  return FolderLayout(root, tuple(splits), class_names, files)


def read_split(
  layout: FolderLayout,
  split: str,
  *,
  skip_unreadable: bool = False,
  skipped: Skipped | None = None,
) -> Iterator[Example]:
  """The examples of `split`, by class then file name: [H, W, 3] uint8 RGB.

  key and file are the path relative to the root ('train/happy/x.jpg').
  """
  if split not in layout.splits:
    raise ValueError(
      f'{layout.root} has no split {split!r}; it has {layout.splits}'
    )
  skipped = Skipped() if skipped is None else skipped
  for label, file in layout.files[split]:
    path = os.path.join(layout.root, file)
    image = sources.read_rgb(
      path,
      where=path,
      file=file,
      split=split,
      skip_unreadable=skip_unreadable,
      skipped=skipped,
    )
    if image is None:
      continue
    yield Example(
      key=file,
      split=split,
      image=np.asarray(image, dtype=np.uint8),
      label=label,
      file=file,
    )
  skipped.log(f'image_folder {layout.root}', split)
