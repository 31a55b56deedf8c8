"""The AffectNet builders' common part; affectnet7 and affectnet8 set the
class count.

Reads either release from the manual directory (data/affectnet.py tells
them apart and says how each is checked). Splits: train, and test = the
official validation set (500 images per class), which every paper reports
as its test set. Original-release faces are cropped to their face box.

Features: image (224, 224, 3) uint8, stored as JPEG (quality 95); label;
file_name (path relative to the release root); valence, arousal (float32);
landmarks [68, 2] float32 (x, y in the source image's pixels; NaN where the
release lacks them). Written as array_record (random access).

info.metadata['skipped'] (image_builder.read_skipped) counts, per split and
reason, the rows left out: codes 8-10 (none, uncertain, no-face), code 7
(contempt) for AffectNet-7, face_width < 0, and under skip_unreadable the
missing or unreadable images. info.metadata['release'] says which release
was read ('original' or 'npy').
"""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

from densenet_flax.data import affectnet
from densenet_flax.datasets import image_builder
from densenet_flax.datasets import manual


class AffectNetBuilder(image_builder.ImageFileBuilder, skip_registration=True):
  """AffectNet-N from a manual download of either release."""

  NUM_CLASSES: int  # 7 or 8
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = affectnet.MANUAL_DOWNLOAD_INSTRUCTIONS

  def _info(self) -> tfds.core.DatasetInfo:
    size = affectnet.IMAGE_SIZE
    scalar = tfds.features.Tensor(shape=(), dtype=np.float32)
    return self.dataset_info_from_configs(
      description=__doc__,
      features=tfds.features.FeaturesDict(
        {
          'image': tfds.features.Image(
            shape=(size, size, 3), encoding_format='jpeg'
          ),
          'label': tfds.features.ClassLabel(
            names=affectnet.class_names(self.NUM_CLASSES)
          ),
          'file_name': tfds.features.Text(),
          'valence': scalar,
          'arousal': scalar,
          'landmarks': tfds.features.Tensor(
            shape=(affectnet.NUM_LANDMARKS, 2), dtype=np.float32
          ),
        }
      ),
      supervised_keys=('image', 'label'),
      homepage='http://mohammadmahoor.com/affectnet/',
      metadata=image_builder.metadata(),
    )

  def _split_generators(self, dl_manager):
    directory = manual.manual_dir(dl_manager, self.MANUAL_DOWNLOAD_INSTRUCTIONS)
    release = affectnet.find_release(directory)
    self.info.metadata['release'] = release.kind
    return {
      split: self._generate_examples(release, split)
      for split in affectnet.SPLITS
    }

  def _generate_examples(self, release, split):
    for example in affectnet.read_split(
      release,
      split,
      num_classes=self.NUM_CLASSES,
      skip_unreadable=self.skip_unreadable,
      skipped=self.skipped,
    ):
      yield (
        example.key,
        {
          'image': example.image,
          'label': example.label,
          'file_name': example.file,
          **example.extras,
        },
      )
    self.finish_split(split)
