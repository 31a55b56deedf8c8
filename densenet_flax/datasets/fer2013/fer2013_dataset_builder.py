"""TFDS builder for FER2013: 48x48 grayscale faces, 7 emotions (manual download).

Reads whichever release is in the manual directory (fer2013.csv,
fer2013.tar.gz, icml_face_data.csv, or the train/ + test/ folders); every
release gives the same examples. Splits: train (Usage Training, 28,709),
public_test (PublicTest, 3,589), private_test (PrivateTest, 3,589).
"""

import tensorflow_datasets as tfds

from densenet_flax.data import fer_sources
from densenet_flax.datasets import manual


class Builder(tfds.core.GeneratorBasedBuilder):
  """FER2013 from a manually downloaded Kaggle release."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = fer_sources.MANUAL_DOWNLOAD_INSTRUCTIONS

  def _info(self) -> tfds.core.DatasetInfo:
    size = fer_sources.IMAGE_SIZE
    return self.dataset_info_from_configs(
      description=__doc__,
      features=tfds.features.FeaturesDict(
        {
          'image': tfds.features.Image(shape=(size, size, 1)),
          'label': tfds.features.ClassLabel(names=fer_sources.EMOTIONS),
        }
      ),
      supervised_keys=('image', 'label'),
      homepage='https://www.kaggle.com/c/challenges-in-representation-'
      'learning-facial-expression-recognition-challenge',
    )

  def _split_generators(self, dl_manager):
    directory = manual.manual_dir(dl_manager, self.MANUAL_DOWNLOAD_INSTRUCTIONS)
    by_split = fer_sources.read_release(fer_sources.find_release(directory))
    return {
      split: self._generate_examples(examples)
      for split, examples in by_split.items()
    }

  def _generate_examples(self, examples):
    for example in examples:
      yield example.key, {'image': example.image, 'label': example.label}
