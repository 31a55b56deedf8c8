"""The rafdb, affectnet7/8 and image_folder TFDS builders on generated files.

Each is prepared through prepare.load_builder into a temporary data dir, as
training does, and read back both by index (`as_data_source`, the
array_record random access the input pipeline uses) and as a tf.data
dataset; what a build skipped is read back from the prepared dataset.
"""

import collections
import os
import shutil

import numpy as np
import pytest

tfds = pytest.importorskip('tensorflow_datasets')

from densenet_flax.data import affectnet, rafdb  # noqa: E402
from densenet_flax.data.sources import DataFormatError  # noqa: E402
from densenet_flax.datasets import image_builder, prepare  # noqa: E402

import fakedata  # noqa: E402

ARRAY_RECORD = tfds.core.FileFormat.ARRAY_RECORD
JPEG_TOLERANCE = 6  # levels: the source JPEG, then the stored one (quality 95)


def by_file(data_source):
  """{file_name: example} of every example, read by index in reverse."""
  found = {}
  for index in reversed(range(len(data_source))):
    example = data_source[index]
    found[example['file_name'].decode()] = example
  assert len(found) == len(data_source)
  return found


def assert_color(image, color):
  mean = image.reshape(-1, 3).astype(float).mean(axis=0)
  assert np.abs(mean - np.array(color)).max() <= JPEG_TOLERANCE, (mean, color)


def assert_array_record(builder):
  assert builder.info.file_format == ARRAY_RECORD
  names = os.listdir(builder.data_dir)
  for split in builder.info.splits:
    assert any(f'-{split}.array_record-' in n for n in names), names


def test_rafdb_prepares_array_record_read_by_index(tmp_path):
  manual = str(tmp_path / 'manual')
  records = fakedata.write_rafdb(manual)
  data_dir = str(tmp_path / 'data')
  builder = prepare.load_builder('rafdb', data_dir=data_dir, manual_dir=manual)
  assert_array_record(builder)
  info = builder.info
  assert info.features['label'].names == list(rafdb.CLASS_NAMES)
  assert info.features['image'].shape == (100, 100, 3)
  assert image_builder.read_skipped(info) == {
    'counts': {'train': {}, 'test': {}},
    'first_files': {},
  }
  for split in rafdb.SPLITS:
    want = {r['file']: r for r in records if r['split'] == split}
    assert info.splits[split].num_examples == len(want)
    got = by_file(builder.as_data_source(split))
    assert set(got) == set(want)
    for file, example in got.items():
      assert example['image'].shape == (100, 100, 3)
      assert example['label'] == want[file]['label']
      assert_color(example['image'], want[file]['color'])
  # tfds.builder alone finds the prepared array_record data, as tf.data too.
  again = tfds.builder('rafdb', data_dir=data_dir)
  assert again.is_prepared() and again.info.file_format == ARRAY_RECORD
  labels = [
    int(ex['label'])
    for ex in tfds.as_numpy(again.as_dataset('test', shuffle_files=False))
  ]
  assert collections.Counter(labels) == collections.Counter(
    r['label'] for r in records if r['split'] == 'test'
  )


def test_rafdb_missing_image_fails_the_build_or_is_recorded(tmp_path):
  manual = str(tmp_path / 'manual')
  records = fakedata.write_rafdb(manual)
  victim = records[5]
  os.remove(os.path.join(manual, victim['file']))
  data_dir = str(tmp_path / 'data')
  with pytest.raises(DataFormatError, match='list_patition_label.txt line 6'):
    prepare.load_builder('rafdb', data_dir=data_dir, manual_dir=manual)
  assert not tfds.builder('rafdb', data_dir=data_dir).is_prepared()
  builder = prepare.load_builder(
    'rafdb', data_dir=data_dir, manual_dir=manual, skip_unreadable=True
  )
  train = sum(r['split'] == 'train' for r in records)
  assert builder.info.splits['train'].num_examples == train - 1
  want = {
    'counts': {'train': {'missing_image': 1}, 'test': {}},
    'first_files': {'missing_image': [victim['file']]},
  }
  assert image_builder.read_skipped(builder.info) == want
  # A later reader, without this project's builder code, finds it too.
  read_only = tfds.builder_from_directory(builder.data_dir)
  assert image_builder.read_skipped(read_only.info) == want


@pytest.mark.parametrize(
  'name,kind', [('affectnet8', 'original'), ('affectnet7', 'npy')]
)
def test_affectnet_builds_from_either_release(tmp_path, name, kind):
  manual = str(tmp_path / 'manual')
  writer = {
    'original': fakedata.write_affectnet_original,
    'npy': fakedata.write_affectnet_npy,
  }[kind]
  records = writer(manual)
  num_classes = int(name[-1])
  builder = prepare.load_builder(
    name, data_dir=str(tmp_path / 'data'), manual_dir=manual
  )
  assert_array_record(builder)
  info = builder.info
  assert info.features['label'].names == list(
    affectnet.class_names(num_classes)
  )
  assert info.features['image'].shape == (224, 224, 3)
  assert info.features['landmarks'].shape == (68, 2)
  assert info.metadata['release'] == kind
  skipped = image_builder.read_skipped(info)
  for split in affectnet.SPLITS:
    reasons = collections.Counter()
    want = {}
    for r in records:
      if r['split'] != split:
        continue
      reason = fakedata.skip_reason(r['code'], r['negative_width'], num_classes)
      if reason:
        reasons[reason] += 1
      else:
        want[r['file']] = r
    assert skipped['counts'][split] == dict(reasons)
    assert info.splits[split].num_examples == len(want)
    got = by_file(builder.as_data_source(split))
    assert set(got) == set(want)
    for file, example in got.items():
      record = want[file]
      assert example['label'] == record['code']
      assert example['image'].shape == (224, 224, 3)
      assert_color(example['image'], record['color'])
      assert example['valence'] == np.float32(record['valence'])
      assert example['arousal'] == np.float32(record['arousal'])
      np.testing.assert_array_equal(example['landmarks'], record['landmarks'])
  assert skipped['first_files']['code_9_uncertain'] == [
    r['file'] for r in records if r['code'] == 9
  ]


def test_image_folder_prepares_each_root_apart(tmp_path):
  root = tmp_path / 'faces'
  records = fakedata.write_image_folder(str(root))
  data_dir = str(tmp_path / 'data')
  builder = prepare.load_builder(
    'image_folder', data_dir=data_dir, manual_dir=str(root)
  )
  assert_array_record(builder)
  info = builder.info
  names = info.features['label'].names
  assert names == ['2', '10', 'happy']
  assert set(info.splits) == {'train', 'test', 'val'}
  config = os.path.basename(os.path.dirname(builder.data_dir))
  assert config.startswith('faces-') and len(config) == len('faces-') + 8
  for split in ('train', 'test', 'val'):
    want = {r['file']: r for r in records if r['split'] == split}
    got = by_file(builder.as_data_source(split))
    assert set(got) == set(want)
    for file, example in got.items():
      width, height = want[file]['size']
      assert example['image'].shape == (height, width, 3)
      assert names[example['label']] == want[file]['class_name']
      assert_color(example['image'], want[file]['color'])
  assert image_builder.read_skipped(info)['counts'] == {
    'train': {},
    'test': {},
    'val': {},
  }
  # tfds.builder with the root reads the same prepared data, as tf.data too.
  again = tfds.builder('image_folder', root=str(root), data_dir=data_dir)
  assert again.is_prepared() and again.data_dir == builder.data_dir
  files = {
    ex['file_name'].decode()
    for ex in tfds.as_numpy(again.as_dataset('val', shuffle_files=False))
  }
  assert files == {r['file'] for r in records if r['split'] == 'val'}
  # Another root, or the same root with a file more, is prepared apart.
  other = tmp_path / 'other' / 'faces'
  shutil.copytree(root, other)
  copy = tfds.builder('image_folder', root=str(other), data_dir=data_dir)
  assert not copy.is_prepared() and copy.data_dir != builder.data_dir
  fakedata.write_image(str(root / 'train' / 'happy' / 'new.jpg'), (9, 9, 9))
  grown = tfds.builder('image_folder', root=str(root), data_dir=data_dir)
  assert not grown.is_prepared()
  # The prepared data reads without its root.
  read_only = tfds.builder_from_directory(builder.data_dir)
  assert read_only.info.features['label'].names == names
  assert len(read_only.as_data_source('train')) == len(
    [r for r in records if r['split'] == 'train']
  )


def test_image_folder_needs_its_root(tmp_path):
  with pytest.raises(ValueError, match='needs its root as the manual dir'):
    prepare.load_builder('image_folder', data_dir=str(tmp_path))
  with pytest.raises(ValueError, match='needs its root as the manual dir'):
    prepare.load_builder('image_folder', data_dir=str(tmp_path), manual_dir='')
  with pytest.raises(ValueError, match='image_folder needs the dataset root'):
    tfds.builder('image_folder', data_dir=str(tmp_path))


def test_fer_builders_keep_tfrecord(digits_dir):
  builder = prepare.load_builder('digits', data_dir=digits_dir)
  assert builder.info.file_format == tfds.core.FileFormat.TFRECORD
