"""Splits read by index from TFDS's array_record files.

RAF-DB, AffectNet and class-folder datasets are prepared as array_record
(datasets/image_builder.py), which TFDS reads through a data source: any
example by its index. That is what lets the pipeline draw any order it
likes (a seeded permutation, class-balanced draws, a validation carve, one
process's rows of each global batch) from datasets too large for host
memory, and resume at the exact example. Labels and file names are read
once, up front; images stay encoded until a tf.data map decodes them in
parallel.
"""

from __future__ import annotations

import functools

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

# Records read per call to the data source: array_record reads a chunk's
# records in one go, and the Python generator that feeds tf.data then costs
# little per image.
READ_CHUNK = 256


class IndexedSplit:
  """One stored split of a prepared array_record dataset.

  Attributes:
    labels: int64 [N], the label of each record, in record order.
    files: str [N], each record's file_name (the source image's path
      relative to the release root): the carve orders examples by it.
  """

  def __init__(self, builder, split: str):
    self.name = f'{builder.name}:{split}'
    self._source = builder.as_data_source(
      split, deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES
    )
    parsed = [
      tf.io.parse_example(
        chunk,
        {
          'label': tf.io.FixedLenFeature([], tf.int64),
          'file_name': tf.io.FixedLenFeature([], tf.string),
        },
      )
      for chunk in self._chunks(range(len(self._source)))
    ]
    self.labels = np.concatenate(
      [p['label'].numpy() for p in parsed] or [np.zeros(0, np.int64)]
    )
    self.files = np.concatenate(
      [p['file_name'].numpy().astype(str) for p in parsed] or [np.zeros(0, str)]
    )

  def __len__(self) -> int:
    return len(self.labels)

  def _chunks(self, indices):
    indices = list(indices)
    for start in range(0, len(indices), READ_CHUNK):
      yield self._source.__getitems__(indices[start : start + READ_CHUNK])

  def dataset(self, indices: np.ndarray) -> tf.data.Dataset:
    """(encoded image, label) of the records at `indices`, in that order."""
    indices = np.asarray(indices, np.int64)

    def records():
      for chunk in self._chunks(indices.tolist()):
        yield from chunk

    ds = tf.data.Dataset.from_generator(
      records, output_signature=tf.TensorSpec((), tf.string)
    )
    return ds.map(_image_and_label, num_parallel_calls=tf.data.AUTOTUNE)


def _image_and_label(record: tf.Tensor):
  example = tf.io.parse_single_example(
    record,
    {
      'image': tf.io.FixedLenFeature([], tf.string),
      'label': tf.io.FixedLenFeature([], tf.int64),
    },
  )
  return example['image'], example['label']


@functools.lru_cache(maxsize=8)
def open_split(builder, split: str) -> IndexedSplit:
  """The split's IndexedSplit, read once per process."""
  return IndexedSplit(builder, split)
