"""TFDS builder for RAF-DB (basic): aligned 100x100 RGB faces, 7 emotions.

Reads the basic release from the manual directory (data/rafdb.py says which
files and how they are checked). Splits: train (12,271) and test (3,068),
from the image names' prefixes. Labels 1-7 of the label file become ids 0-6:
surprise, fear, disgust, happiness, sadness, anger, neutral.

Features: image (100, 100, 3) uint8, stored as JPEG (quality 95); label;
file_name, the image's path relative to the release root. Written as
array_record (random access). Images skipped under skip_unreadable are
counted in info.metadata['skipped'] (image_builder.read_skipped).
"""

import tensorflow_datasets as tfds

from densenet_flax.data import rafdb
from densenet_flax.datasets import image_builder
from densenet_flax.datasets import manual


class Builder(image_builder.ImageFileBuilder):
  """RAF-DB's basic release, from a manual download."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = rafdb.MANUAL_DOWNLOAD_INSTRUCTIONS

  def _info(self) -> tfds.core.DatasetInfo:
    size = rafdb.IMAGE_SIZE
    return self.dataset_info_from_configs(
      description=__doc__,
      features=tfds.features.FeaturesDict(
        {
          'image': tfds.features.Image(
            shape=(size, size, 3), encoding_format='jpeg'
          ),
          'label': tfds.features.ClassLabel(names=rafdb.CLASS_NAMES),
          'file_name': tfds.features.Text(),
        }
      ),
      supervised_keys=('image', 'label'),
      homepage='http://www.whdeng.cn/RAF/model1.html',
      metadata=image_builder.metadata(),
    )

  def _split_generators(self, dl_manager):
    directory = manual.manual_dir(dl_manager, self.MANUAL_DOWNLOAD_INSTRUCTIONS)
    root = rafdb.find_release(directory)
    labels = rafdb.read_labels(root)  # every line checked before any image
    return {
      split: self._generate_examples(root, split, labels)
      for split in rafdb.SPLITS
    }

  def _generate_examples(self, root, split, labels):
    for example in rafdb.read_split(
      root,
      split,
      skip_unreadable=self.skip_unreadable,
      skipped=self.skipped,
      labels=labels,
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
