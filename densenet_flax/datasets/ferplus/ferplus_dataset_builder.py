"""TFDS builder for FER+: FER2013 faces relabelled by 10 crowd votes each.

Needs, in the manual directory, fer2013new.csv (microsoft/FERPlus) and a
FER2013 CSV release (fer2013.csv, fer2013.tar.gz or icml_face_data.csv; the
folder release has no row order to join on). Row i of fer2013new.csv labels
row i of fer2013.csv.

Every face is kept (version 1.1.0; 1.0.0 kept only the majority rows):
  votes     all 10 raw counts (8 emotions, unknown, NF), from which the FER+
            paper's label modes are computed (`fer_sources.ferplus_target`:
            majority, probability, crossentropy, multi_target);
  majority  True when the row has a "majority" label: after dropping single
            votes as outliers, the top class holds more than half of the
            votes and is an emotion;
  label     the majority emotion where `majority` is True. Where it is False
            (tied, or 'unknown'/'NF' on top) it is only the emotion with the
            most raw votes (the first on a tie) and NOT a label: filter on
            `majority` before using `label` (the input pipeline evaluates on
            majority rows only, as the paper does).
Rows that are not faces (empty image name) are excluded; the counts per split
and reason are in `info.metadata['excluded']` ({split: {'not_a_face': n}}).
`info.metadata['no_majority']` ({split: n}) counts the kept faces whose
`majority` is False.
"""

import os

import numpy as np
import tensorflow_datasets as tfds

from densenet_flax.data import fer_sources
from densenet_flax.datasets import manual

MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
FER+ needs two files in the manual directory:
  {fer_sources.FERPLUS_NAME}  from https://github.com/microsoft/FERPlus
  and one FER2013 CSV release:

{fer_sources.CSV_RELEASES_TEXT}"""


class Builder(tfds.core.GeneratorBasedBuilder):
  """FER+ votes joined to FER2013 pixels: every face, flagged `majority`."""

  VERSION = tfds.core.Version('1.1.0')
  RELEASE_NOTES = {
    '1.0.0': 'Initial release.',
    '1.1.0': 'Keeps the faces without a majority label (for the '
    'probability, crossentropy and multi_target label modes); '
    'new `majority` feature; metadata no_majority.',
  }
  MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS

  def _info(self) -> tfds.core.DatasetInfo:
    size = fer_sources.IMAGE_SIZE
    return self.dataset_info_from_configs(
      description=__doc__,
      features=tfds.features.FeaturesDict(
        {
          'image': tfds.features.Image(shape=(size, size, 1)),
          'votes': tfds.features.Tensor(
            shape=(len(fer_sources.FERPLUS_VOTE_COLUMNS),), dtype=np.int32
          ),
          'label': tfds.features.ClassLabel(names=fer_sources.FERPLUS_EMOTIONS),
          'majority': tfds.features.Tensor(shape=(), dtype=np.bool_),
        }
      ),
      supervised_keys=('image', 'label'),
      homepage='https://github.com/microsoft/FERPlus',
      metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager):
    directory = manual.manual_dir(dl_manager, self.MANUAL_DOWNLOAD_INSTRUCTIONS)
    votes_path = os.path.join(directory, fer_sources.FERPLUS_NAME)
    fer_path = fer_sources.find_csv_source(directory)
    missing = [] if os.path.isfile(votes_path) else [votes_path]
    if fer_path is None:
      missing.append(
        os.path.join(directory, fer_sources.CSV_NAME)
        + ' (or .tar.gz / icml_face_data.csv)'
      )
    if missing:
      raise FileNotFoundError(
        f'FER+ files missing: {", ".join(missing)}\n\n'
        f'{self.MANUAL_DOWNLOAD_INSTRUCTIONS}'
      )
    by_split, excluded, no_majority = fer_sources.join_ferplus(
      fer_path, votes_path
    )
    self.info.metadata['excluded'] = {
      split: dict(counts) for split, counts in excluded.items()
    }
    self.info.metadata['no_majority'] = dict(no_majority)
    return {
      split: self._generate_examples(rows) for split, rows in by_split.items()
    }

  def _generate_examples(self, rows):
    for example, votes, label, majority in rows:
      yield (
        example.key,
        {
          'image': example.image,
          'votes': votes,
          'label': label,
          'majority': majority,
        },
      )
