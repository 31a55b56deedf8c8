"""What the builders over image files share: array_record, and what was skipped.

The rafdb, affectnet7/8 and image_folder builders wrap a reader of
densenet_flax/data and differ from the FER2013 ones in two ways:

  - They write TFDS's array_record file format (not tfrecord), so that
    `builder.as_data_source(split)` reads any example by its index: the
    input pipeline draws examples at random from datasets too large for host
    memory. TFDS 4.9.10 takes the format as the builder's `file_format`
    constructor argument; these builders default it to array_record, so
    `tfds.builder(name)` and `prepare.load_builder(name)` both write and read
    array_record without being asked. TFDS 4.9.10 reads array_record only
    through as_data_source (its `as_dataset` refuses the format), so these
    builders give `as_dataset` a tf.data wrapper of the data source:
    examples in stored order, decoded in Python; for tools and tests, not
    for training throughput.
  - They take `skip_unreadable` (default False): a missing or unreadable
    image is then skipped and counted instead of failing the build. What a
    build skipped, by rule or by request, is logged and kept in the prepared
    dataset's metadata; `read_skipped(info)` reads it back.
"""

from __future__ import annotations

import tensorflow_datasets as tfds

from densenet_flax.data import sources

ARRAY_RECORD = 'array_record'
SKIPPED = 'skipped'  # key of info.metadata


class ImageFileBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """A TFDS builder over one of densenet_flax/data's image readers.

  Args:
    skip_unreadable: skip (and count) missing or unreadable images instead
      of refusing the build with a DataFormatError.
    file_format: TFDS file format; array_record unless given.
    **kwargs: data_dir, version, ... as for any TFDS builder.
  """

  def __init__(
    self, *, skip_unreadable: bool = False, file_format=None, **kwargs
  ):
    self.skip_unreadable = skip_unreadable
    self.skipped = sources.Skipped()
    super().__init__(file_format=file_format or ARRAY_RECORD, **kwargs)

  @classmethod
  def builder_kwargs(
    cls, *, manual_dir: str | None, skip_unreadable: bool
  ) -> dict:
    """The constructor arguments prepare.load_builder passes on."""
    del manual_dir  # read from the download manager, as TFDS does
    return {'skip_unreadable': skip_unreadable}

  def _as_dataset(
    self, split, decoders=None, read_config=None, shuffle_files=False
  ):
    """`as_dataset` on array_record: the data source's examples, in order.

    TFDS 4.9.10 has no tf.data reader for array_record; this one yields the
    examples of `as_data_source(split)` one by one, decoded as
    info.features says (read_config does not apply).
    """
    if self.info.file_format != tfds.core.FileFormat.ARRAY_RECORD:
      return super()._as_dataset(
        split,
        decoders=decoders,
        read_config=read_config,
        shuffle_files=shuffle_files,
      )
    if decoders is not None or shuffle_files:
      raise NotImplementedError(
        f'{self.name} is stored as array_record, read by index: as_dataset '
        f'takes neither decoders nor shuffle_files here; use '
        f'builder.as_data_source(split, decoders=...) and draw the indices '
        f'in the order you need'
      )
    import tensorflow as tf  # only this reader needs tf.data

    source = self.as_data_source(split)
    return tf.data.Dataset.from_generator(
      lambda: (source[i] for i in range(len(source))),
      output_signature=self.info.features.get_tensor_spec(),
    )

  def finish_split(self, split: str) -> None:
    """Records what the split skipped; called when its examples are written.

    The metadata is written with dataset_info.json after the last split, so
    it holds every split's counts (zero counts included).
    """
    self.skipped.include(split)
    self.info.metadata[SKIPPED] = self.skipped.as_dict()


def metadata() -> tfds.core.MetadataDict:
  """The metadata of a fresh build: nothing skipped yet."""
  return tfds.core.MetadataDict({SKIPPED: sources.Skipped().as_dict()})


def read_skipped(info: tfds.core.DatasetInfo) -> dict:
  """What the build of a prepared dataset skipped.

  Returns {'counts': {split: {reason: n}}, 'first_files': {reason: [file,
  ...]}} (files relative to the release root, the first few per reason), as
  the builder recorded it; works on a ReadOnlyBuilder's info as well.
  """
  metadata = info.metadata or {}
  if SKIPPED not in metadata:
    raise KeyError(
      f'{info.full_name}: the prepared dataset records no skipped files; '
      f'expected metadata {SKIPPED!r} (written by rafdb, affectnet7, '
      f'affectnet8 and image_folder)'
    )
  return metadata[SKIPPED]
