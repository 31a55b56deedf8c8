"""TFDS builder for the 8x8 handwritten digits that scikit-learn ships.

1,797 images from the UCI "Optical Recognition of Handwritten Digits" set,
read from inside the scikit-learn package: no download, so the offline demo
trains on real data. Pixel counts 0-16 are scaled to uint8 by
round(v * 255 / 16).

Fixed split: example i (in scikit-learn's order) is in `test` when
i % 5 == 4 (359 images), else in `train` (1,438 images).
"""

import numpy as np
import tensorflow_datasets as tfds

TEST_EVERY = 5  # i % TEST_EVERY == TEST_EVERY - 1 -> test


def load_digits_uint8() -> tuple[np.ndarray, np.ndarray]:
  """(images [1797, 8, 8, 1] uint8, labels [1797] int64) in scikit-learn order."""
  from sklearn.datasets import load_digits  # ships the data in the wheel

  digits = load_digits()
  images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
  return images[..., None], digits.target.astype(np.int64)


class Builder(tfds.core.GeneratorBasedBuilder):
  """scikit-learn's digits as a TFDS dataset."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
      description=__doc__,
      features=tfds.features.FeaturesDict(
        {
          'image': tfds.features.Image(shape=(8, 8, 1)),
          'label': tfds.features.ClassLabel(num_classes=10),
        }
      ),
      supervised_keys=('image', 'label'),
      homepage='https://scikit-learn.org/stable/datasets/toy_dataset.html',
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    images, labels = load_digits_uint8()
    test = np.arange(len(labels)) % TEST_EVERY == TEST_EVERY - 1
    return {
      'train': self._generate_examples(images, labels, ~test),
      'test': self._generate_examples(images, labels, test),
    }

  def _generate_examples(self, images, labels, selected):
    for index in np.flatnonzero(selected):
      yield int(index), {'image': images[index], 'label': int(labels[index])}
