"""TFDS builder for a class-folder dataset: root/<split>/<class>/*.jpg.

The classes are those of the root it is built from (data/image_folder.py
says how they are named, ordered and checked), so the builder takes the root
at construction: `tfds.builder('image_folder', root=DIR)`, or
`prepare.load_builder('image_folder', manual_dir=DIR)`. Each root is
prepared under its own config, `<root's name>-<hash>`, the hash taken over
the root's absolute path, splits, classes and file names: two roots never
share prepared data, and a root whose files were added, removed or renamed
is prepared anew. (An image edited in place keeps its name: delete the
prepared config's folder to pick up the change.) A prepared config reads
without its root through `tfds.builder_from_directory(builder.data_dir)`.

Features: image (H, W, 3) uint8 at its own size, stored as JPEG (quality
95); label; file_name ('train/happy/x.jpg', relative to the root). Written
as array_record (random access). Images skipped under skip_unreadable are
counted in info.metadata['skipped'] (image_builder.read_skipped).
"""

from __future__ import annotations

import hashlib
import json
import os
import re

import tensorflow_datasets as tfds

from densenet_flax.data import image_folder
from densenet_flax.datasets import image_builder


def config_name(layout: image_folder.FolderLayout) -> str:
  """'<root name>-<8 hex digits>' of the root's path, splits, classes, files."""
  digest = hashlib.sha256(
    json.dumps(
      [layout.root, layout.splits, layout.class_names, layout.files]
    ).encode()
  ).hexdigest()[:8]
  name = re.sub(r'[^A-Za-z0-9_]+', '_', os.path.basename(layout.root))
  return f'{name.strip("_") or "root"}-{digest}'


class Builder(image_builder.ImageFileBuilder):
  """The class folders under one root.

  Args:
    root: the dataset's root folder (its layout is checked here, without
      decoding any image).
    skip_unreadable, file_format, data_dir, version: as ImageFileBuilder.
  """

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = image_folder.MANUAL_DOWNLOAD_INSTRUCTIONS

  def __init__(self, *, root: str | None = None, **kwargs):
    if not root:
      raise ValueError(
        'image_folder needs the dataset root: tfds.builder("image_folder", '
        'root=DIR) or prepare.load_builder("image_folder", manual_dir=DIR) '
        '(config.manual_dir). A prepared one reads without it through '
        'tfds.builder_from_directory.\n\n' + self.MANUAL_DOWNLOAD_INSTRUCTIONS
      )
    self.layout = image_folder.find_release(root)
    config = tfds.core.BuilderConfig(
      name=config_name(self.layout),
      description=f'The class folders under {self.layout.root}',
    )
    super().__init__(config=config, **kwargs)

  @classmethod
  def builder_kwargs(cls, *, manual_dir: str | None, skip_unreadable: bool):
    if not manual_dir:  # None, or config.manual_dir's default ''
      raise ValueError(
        'image_folder needs its root as the manual directory '
        '(config.manual_dir / --manual_dir)\n\n'
        + cls.MANUAL_DOWNLOAD_INSTRUCTIONS
      )
    return {'root': manual_dir, 'skip_unreadable': skip_unreadable}

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
      description=__doc__,
      features=tfds.features.FeaturesDict(
        {
          'image': tfds.features.Image(
            shape=(None, None, 3), encoding_format='jpeg'
          ),
          'label': tfds.features.ClassLabel(names=self.layout.class_names),
          'file_name': tfds.features.Text(),
        }
      ),
      supervised_keys=('image', 'label'),
      metadata=image_builder.metadata(),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # the root was given at construction
    return {
      split: self._generate_examples(split) for split in self.layout.splits
    }

  def _generate_examples(self, split):
    for example in image_folder.read_split(
      self.layout,
      split,
      skip_unreadable=self.skip_unreadable,
      skipped=self.skipped,
    ):
      yield (
        example.key,
        {
          'image': example.image,
          'label': example.label,
          'file_name': example.file,
        },
      )
    self.finish_split(split)
