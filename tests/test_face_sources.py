"""The RAF-DB, AffectNet and class-folder readers on generated releases.

Each layout is written by fakedata.py exactly as documented, odd rows
included; every example read must be the file it names (each image is one
solid color, unique per example), and every bad input must be refused with
a DataFormatError naming the file (and line) and what was expected.
"""

import collections
import os
import pathlib
import re

import numpy as np
import pytest

from densenet_flax.data import affectnet, image_folder, rafdb, sources
from densenet_flax.data.sources import DataFormatError

import fakedata

JPEG_TOLERANCE = 4  # levels a solid color may move through JPEG


def assert_color(image, color):
  """image: [H, W, 3] uint8 holding one solid color (up to JPEG error)."""
  assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
  mean = image.reshape(-1, 3).mean(axis=0)
  assert np.abs(mean - np.array(color)).max() <= JPEG_TOLERANCE, (mean, color)


def error_at(pattern):
  return pytest.raises(DataFormatError, match=pattern)


# --- RAF-DB --------------------------------------------------------------------


@pytest.fixture
def raf(tmp_path):
  root = tmp_path / 'raf'
  return str(root), fakedata.write_rafdb(str(root))


def label_file(root):
  return os.path.join(root, 'EmoLabel', 'list_patition_label.txt')


def test_rafdb_reads_each_split_in_label_file_order(raf):
  root, records = raf
  assert rafdb.find_release(root) == root
  for split in rafdb.SPLITS:
    want = [r for r in records if r['split'] == split]
    got = list(rafdb.read_split(root, split))
    assert [(e.key, e.file, e.label, e.split) for e in got] == [
      (r['key'], r['file'], r['label'], split) for r in want
    ]
    for example, record in zip(got, want):
      assert example.image.shape == (100, 100, 3)
      assert_color(example.image, record['color'])
  # Label 1 (surprise) is id 0; every class is present in both splits.
  assert sorted({r['label'] for r in records}) == list(range(7))
  assert (
    rafdb.CLASS_NAMES[0] == 'surprise' and rafdb.CLASS_NAMES[6] == 'neutral'
  )


def test_rafdb_resizes_and_colors_a_small_grayscale_image(raf):
  root, records = raf
  first = next(rafdb.read_split(root, 'train'))
  assert records[0]['color'][0] == records[0]['color'][2]  # written as gray
  assert first.image.shape == (100, 100, 3)
  assert_color(first.image, records[0]['color'])


def test_rafdb_release_in_a_basic_subfolder_is_found(tmp_path):
  fakedata.write_rafdb(str(tmp_path / 'basic'))
  assert rafdb.find_release(str(tmp_path)) == str(tmp_path / 'basic')


@pytest.mark.parametrize(
  'line,message',
  [
    ('train_00099.jpg', "'train_00099.jpg' has 1 fields; expected '<image> <"),
    ('train_00099.jpg 5 7', "'train_00099.jpg 5 7' has 3 fields"),
    ('train_00099.jpg 8', "label '8' is out of range; expected an integer 1-7"),
    ('train_00099.jpg 0', "label '0' is out of range"),
    ('train_00099.jpg five', "label 'five' is out of range"),
    ('val_0001.jpg 3', "image name 'val_0001.jpg' does not say its split"),
    (
      'train_00001.jpg 3',
      r'train_00001.jpg is listed again \(first on line 1\)',
    ),
  ],
  ids=[
    'one_field',
    'three_fields',
    'label_8',
    'label_0',
    'word',
    'split',
    'dup',
  ],
)
def test_rafdb_malformed_label_line_names_file_and_line(raf, line, message):
  root, records = raf
  with open(label_file(root), 'a') as f:
    f.write(line + '\n')
  where = re.escape(f'{label_file(root)} line {len(records) + 1}: ')
  with error_at(where + message):
    list(rafdb.read_split(root, 'train'))


def test_rafdb_without_label_file_shows_the_expected_tree(tmp_path):
  (tmp_path / 'Image').mkdir()
  with error_at('no EmoLabel/list_patition_label.txt') as error:
    rafdb.find_release(str(tmp_path))
  assert 'Image/\n      aligned/' in str(error.value)
  with pytest.raises(FileNotFoundError, match='does not exist'):
    rafdb.find_release(str(tmp_path / 'absent'))


def test_rafdb_zipped_aligned_images_are_named(raf):
  root, _ = raf
  aligned = os.path.join(root, 'Image', 'aligned')
  os.rename(aligned, aligned + '_moved')
  open(aligned + '.zip', 'wb').close()
  with error_at(f'{re.escape(aligned)} is missing; extract aligned.zip'):
    rafdb.find_release(root)


@pytest.mark.parametrize('fault', ['missing', 'unreadable'])
def test_rafdb_bad_image_is_refused_or_skipped_and_counted(raf, fault):
  root, records = raf
  victim = records[3]
  path = os.path.join(root, victim['file'])
  if fault == 'missing':
    os.remove(path)
    problem = f'the image {path} does not exist'
  else:
    with open(path, 'wb') as f:
      f.write(b'not a jpeg')
    problem = f'unreadable image {path}'
  where = f'{label_file(root)} line 4: '
  with error_at(re.escape(where + problem) + '.*expected a JPEG or PNG'):
    list(rafdb.read_split(root, 'train'))
  skipped = sources.Skipped()
  got = list(
    rafdb.read_split(root, 'train', skip_unreadable=True, skipped=skipped)
  )
  assert [e.key for e in got] == [
    r['key'] for r in records if r['split'] == 'train' and r is not victim
  ]
  reason = f'{fault}_image'
  assert skipped.as_dict() == {
    'counts': {'train': {reason: 1}},
    'first_files': {reason: [victim['file']]},
  }


# --- AffectNet -----------------------------------------------------------------

WRITERS = {
  'original': fakedata.write_affectnet_original,
  'npy': fakedata.write_affectnet_npy,
}


def expected_skips(records, split, num_classes):
  reasons = [
    fakedata.skip_reason(r['code'], r['negative_width'], num_classes)
    for r in records
    if r['split'] == split
  ]
  return dict(collections.Counter(r for r in reasons if r))


@pytest.mark.parametrize('num_classes', [7, 8])
@pytest.mark.parametrize('kind', ['original', 'npy'])
def test_affectnet_reads_faces_labels_and_extras(tmp_path, kind, num_classes):
  records = WRITERS[kind](str(tmp_path))
  release = affectnet.find_release(str(tmp_path))
  assert release == affectnet.Release(kind, str(tmp_path))
  skipped = sources.Skipped()
  for split in affectnet.SPLITS:
    want = [
      r
      for r in records
      if r['split'] == split
      and not fakedata.skip_reason(r['code'], r['negative_width'], num_classes)
    ]
    got = list(
      affectnet.read_split(
        release, split, num_classes=num_classes, skipped=skipped
      )
    )
    assert [(e.key, e.file, e.label) for e in got] == [
      (r['key'], r['file'], r['code']) for r in want
    ]
    assert {e.label for e in got} == set(range(num_classes))
    for example, record in zip(got, want):
      assert example.image.shape == (224, 224, 3)
      assert_color(example.image, record['color'])
      # Original release: the face box only, none of the black background
      # (one pixel of it would be 7 stored rows 40+ levels off).
      image = example.image.astype(float)
      for edge in (image[:4], image[-4:], image[:, :4], image[:, -4:]):
        assert np.abs(edge.mean((0, 1)) - record['color']).max() <= 10
      assert example.extras['valence'] == np.float32(record['valence'])
      assert example.extras['arousal'] == np.float32(record['arousal'])
      np.testing.assert_array_equal(
        example.extras['landmarks'], record['landmarks']
      )
    assert skipped.as_dict()['counts'][split] == expected_skips(
      records, split, num_classes
    )
  first = skipped.as_dict()['first_files']
  assert first['code_8_none'] == [r['file'] for r in records if r['code'] == 8]


def test_affectnet_names_classes_7_and_8():
  assert affectnet.class_names(8)[-1] == 'contempt'
  assert affectnet.class_names(7) == affectnet.CLASS_NAMES[:7]
  with pytest.raises(ValueError, match='7 or 8 classes'):
    affectnet.class_names(11)


def test_affectnet_two_releases_in_one_directory_are_refused(tmp_path):
  fakedata.write_affectnet_original(str(tmp_path))
  fakedata.write_affectnet_npy(str(tmp_path))
  with error_at('holds two AffectNet releases') as error:
    affectnet.find_release(str(tmp_path))
  message = str(error.value)
  assert 'Manually_Annotated_file_lists' in message and 'train_set' in message


def test_affectnet_without_a_release_shows_both_trees(tmp_path):
  (tmp_path / 'faces').mkdir()
  with error_at('no AffectNet release') as error:
    affectnet.find_release(str(tmp_path))
  assert 'training.csv' in str(error.value)
  assert '<id>_exp.npy' in str(error.value)


def test_affectnet_release_with_a_part_missing_names_it(tmp_path):
  fakedata.write_affectnet_original(str(tmp_path))
  os.remove(tmp_path / 'Manually_Annotated_file_lists' / 'validation.csv')
  with error_at('lacks Manually_Annotated_file_lists/validation.csv'):
    affectnet.find_release(str(tmp_path))


def rewrite_csv(root, edit):
  path = os.path.join(root, 'Manually_Annotated_file_lists', 'training.csv')
  lines = open(path).read().splitlines()
  open(path, 'w').write('\n'.join(edit(lines)) + '\n')
  return path


def set_field(line, column, value):
  fields = line.split(',')
  fields[affectnet.COLUMNS.index(column)] = value
  return ','.join(fields)


@pytest.mark.parametrize(
  'column,value,message',
  [
    ('expression', '11', "expression '11' is out of range; expected an "),
    ('expression', '-1', "expression '-1' is out of range"),
    ('expression', 'happy', "expression 'happy' is out of range"),
    ('face_x', '8.5', "face_x '8.5' is not a number; expected an integer"),
    ('valence', 'high', "valence 'high' is not a number"),
    ('facial_landmarks', '1;2;3', '3 landmark values; expected 136'),
    ('face_x', '500', 'the face box x=500 .* holds no pixel of'),
  ],
  ids=['code_11', 'negative', 'word', 'float_box', 'valence', 'lnd', 'box'],
)
def test_affectnet_malformed_row_names_csv_and_line(
  tmp_path, column, value, message
):
  fakedata.write_affectnet_original(str(tmp_path))
  path = rewrite_csv(
    str(tmp_path),
    lambda lines: lines[:2] + [set_field(lines[2], column, value)] + lines[3:],
  )
  release = affectnet.find_release(str(tmp_path))
  with error_at(re.escape(f'{path} line 3: ') + message):
    list(affectnet.read_split(release, 'train'))


def test_affectnet_csv_with_missing_columns_is_refused(tmp_path):
  fakedata.write_affectnet_original(str(tmp_path))
  path = rewrite_csv(
    str(tmp_path),
    lambda lines: (
      [lines[0].replace(',valence,arousal', '')]
      + [line.rsplit(',', 2)[0] for line in lines[1:]]
    ),
  )
  release = affectnet.find_release(str(tmp_path))
  with error_at(
    re.escape(f"{path} line 1: missing column(s) ['valence', 'arousal']")
  ):
    list(affectnet.read_split(release, 'train'))


def test_affectnet_listed_image_missing_is_refused_or_skipped(tmp_path):
  records = fakedata.write_affectnet_original(str(tmp_path))
  victim = records[2]
  path = tmp_path / victim['file']
  os.remove(path)
  release = affectnet.find_release(str(tmp_path))
  csv_path = tmp_path / 'Manually_Annotated_file_lists' / 'training.csv'
  with error_at(
    re.escape(f'{csv_path} line 4: the image {path} does not exist')
  ):
    list(affectnet.read_split(release, 'train'))
  skipped = sources.Skipped()
  got = list(
    affectnet.read_split(
      release, 'train', skip_unreadable=True, skipped=skipped
    )
  )
  assert victim['key'] not in {e.key for e in got}
  assert skipped.counts['train']['missing_image'] == 1
  assert skipped.first_files['missing_image'] == [victim['file']]
  assert len(got) == 16 - 1  # 2 of each code 0-7, less the missing one


@pytest.mark.parametrize(
  'fault,message',
  [
    ('code_12', r'2_exp.npy: expression .12. is out of range'),
    ('no_exp', r'2.jpg: no annotation .*2_exp.npy; expected annotations/'),
    ('no_val', r'2_val.npy is missing; expected it beside the other valence'),
    ('bad_npy', r'2_exp.npy: unreadable .npy file'),
  ],
)
def test_affectnet_npy_bad_annotation_names_the_file(tmp_path, fault, message):
  fakedata.write_affectnet_npy(str(tmp_path))
  annotations = tmp_path / 'train_set' / 'annotations'
  if fault == 'code_12':
    np.save(annotations / '2_exp.npy', np.str_('12'))
  elif fault == 'no_exp':
    os.remove(annotations / '2_exp.npy')
  elif fault == 'no_val':
    os.remove(annotations / '2_val.npy')
  else:
    (annotations / '2_exp.npy').write_bytes(b'garbage')
  release = affectnet.find_release(str(tmp_path))
  with error_at(message):
    list(affectnet.read_split(release, 'train'))


def test_affectnet_npy_release_without_landmarks_gives_nan(tmp_path):
  fakedata.write_affectnet_npy(str(tmp_path))
  for split in ('train_set', 'val_set'):
    folder = tmp_path / split / 'annotations'
    for name in os.listdir(folder):
      if name.endswith('_lnd.npy'):
        os.remove(folder / name)
  release = affectnet.find_release(str(tmp_path))
  example = next(affectnet.read_split(release, 'test'))
  assert example.extras['landmarks'].shape == (68, 2)
  assert np.isnan(example.extras['landmarks']).all()
  assert np.isfinite(example.extras['valence'])


# --- class folders -------------------------------------------------------------


@pytest.fixture
def folder(tmp_path):
  root = tmp_path / 'faces'
  return str(root), fakedata.write_image_folder(str(root))


def test_image_folder_layout_from_listings(folder):
  root, records = folder
  layout = image_folder.find_release(root)
  assert layout.root == root
  assert layout.splits == ('test', 'train', 'val')
  assert layout.class_names == ('2', '10', 'happy')  # numbers as numbers


def test_image_folder_reads_rgb_at_original_size(folder):
  root, records = folder
  layout = image_folder.find_release(root)
  names = layout.class_names
  for split in layout.splits:
    want = sorted(
      (r for r in records if r['split'] == split),
      key=lambda r: (image_folder.class_order(r['class_name']), r['file']),
    )
    got = list(image_folder.read_split(layout, split))
    assert [(e.key, e.file, names[e.label]) for e in got] == [
      (r['file'], r['file'], r['class_name']) for r in want
    ]
    for example, record in zip(got, want):
      width, height = record['size']
      assert example.image.shape == (height, width, 3)
      assert_color(example.image, record['color'])


def test_class_order_sorts_numeric_names_as_numbers():
  names = ['10', 'b', '2', 'A', '1']
  assert sorted(names, key=image_folder.class_order) == [
    '1',
    '2',
    '10',
    'A',
    'b',
  ]


def test_image_folder_flat_folder_shows_the_expected_tree(tmp_path):
  fakedata.write_image(str(tmp_path / 'train' / 'a.jpg'), (9, 9, 9))
  with error_at(
    re.escape(f'{tmp_path / "train"} holds images (a.jpg) directly')
  ) as error:
    image_folder.find_release(str(tmp_path))
  assert 'train/<class>/a.jpg' in str(error.value)
  assert image_folder.EXPECTED_TREE in str(error.value)
  os.rename(tmp_path / 'train' / 'a.jpg', tmp_path / 'a.jpg')
  with error_at(re.escape(f'{tmp_path} holds images (a.jpg) directly')):
    image_folder.find_release(str(tmp_path))


def test_image_folder_empty_class_folder_is_named(folder):
  root, _ = folder
  os.makedirs(os.path.join(root, 'train', 'happy_too'))
  with error_at(
    re.escape(f'{os.path.join(root, "train", "happy_too")}: empty class folder')
  ):
    image_folder.find_release(root)


def test_image_folder_class_missing_from_train_is_named(folder):
  root, _ = folder
  fakedata.write_image(os.path.join(root, 'val', 'sad', 'x.jpg'), (9, 9, 9))
  with error_at(
    re.escape(f"{os.path.join(root, 'val', 'sad')}: class 'sad' is not a ")
    + '.*every split must use'
  ):
    image_folder.find_release(root)


@pytest.mark.parametrize(
  'make,message',
  [
    (lambda root: os.rename(root / 'train', root / 'training'), 'no train/'),
    (
      lambda root: (root / 'train' / 'happy' / 'notes.txt').write_text('x'),
      'notes.txt: not an image file',
    ),
    (
      lambda root: (root / 'train' / 'labels.csv').write_text('x'),
      'labels.csv: not a folder; expected only class folders',
    ),
    (lambda root: os.makedirs(root / 'extra'), 'extra holds no class folders'),
  ],
  ids=['no_train', 'stray_file', 'stray_in_split', 'empty_split'],
)
def test_image_folder_other_layout_faults(folder, make, message):
  root, _ = folder
  make(pathlib.Path(root))
  with error_at(message):
    image_folder.find_release(root)


def test_image_folder_unreadable_image_refused_or_skipped(folder):
  root, records = folder
  victim = next(r for r in records if r['split'] == 'train')
  path = os.path.join(root, victim['file'])
  open(path, 'wb').close()
  layout = image_folder.find_release(root)  # listings only: not noticed
  with error_at(re.escape(f'{path}: unreadable image (')):
    list(image_folder.read_split(layout, 'train'))
  skipped = sources.Skipped()
  got = list(
    image_folder.read_split(
      layout, 'train', skip_unreadable=True, skipped=skipped
    )
  )
  assert len(got) == sum(r['split'] == 'train' for r in records) - 1
  assert skipped.first_files == {'unreadable_image': [victim['file']]}


def test_affectnet_skipped_rows_are_logged(tmp_path, caplog):
  fakedata.write_affectnet_npy(str(tmp_path))
  release = affectnet.find_release(str(tmp_path))
  with caplog.at_level('INFO', logger='densenet_flax.data.sources'):
    list(affectnet.read_split(release, 'test', num_classes=7))
  (message,) = [r.getMessage() for r in caplog.records]
  assert message.startswith('AffectNet-7 test: skipped 1 code_10_no_face')
  assert '1 code_7_contempt (first: val_set/images/' in message
