"""Every malformed FER2013 / FER+ input gives an error naming file, line and rule."""

import os

import numpy as np
import pytest

from densenet_flax.data import fer_sources

import fakedata

PIXELS = ' '.join(['7'] * 2304)


def write(tmp_path, text, name='fer2013.csv'):
  path = tmp_path / name
  path.write_text(text)
  return str(path)


def read_all(path):
  return list(fer_sources.read_csv_source(path))


GOOD_ROW = f'3,{PIXELS},Training'


@pytest.mark.parametrize(
  'row,message',
  [
    (
      f'3,{" ".join(["7"] * 2303)},Training',
      'line 3: pixels has 2303 values; expected 2304',
    ),
    (f'3,{PIXELS[:-1]}x,Training', "line 3: pixel value 'x' is not an integer"),
    (f'3,{PIXELS[:-1]}256,Training', 'line 3: pixel value 256 is out of range'),
    (f'3,{PIXELS[:-1]}-1,Training', 'line 3: pixel value -1 is out of range'),
    (
      f'7,{PIXELS},Training',
      "line 3: unknown emotion id '7'; expected an integer 0-6",
    ),
    (f'happy,{PIXELS},Training', "line 3: unknown emotion id 'happy'"),
    (f'3,{PIXELS},Validation', "line 3: unknown Usage 'Validation'"),
    (f'3,{PIXELS}', 'line 3: 2 fields; expected 3'),
  ],
  ids=[
    'short',
    'non_integer',
    'above_255',
    'negative',
    'label_7',
    'label_name',
    'usage',
    'missing_field',
  ],
)
def test_malformed_row_names_file_and_line(tmp_path, row, message):
  path = write(
    tmp_path, f'emotion,pixels,Usage\n{GOOD_ROW}\n{row}\n{GOOD_ROW}\n'
  )
  with pytest.raises(fer_sources.DataFormatError) as info:
    read_all(path)
  assert str(info.value).startswith(f'{path} {message}')


def test_missing_column_is_named(tmp_path):
  path = write(tmp_path, 'emotion,Usage\n3,Training\n')
  with pytest.raises(
    fer_sources.DataFormatError,
    match=r"line 1: missing column\(s\) \['pixels'\]",
  ):
    read_all(path)


def test_empty_file_and_blank_line(tmp_path):
  with pytest.raises(fer_sources.DataFormatError, match='the file is empty'):
    read_all(write(tmp_path, ''))
  path = write(tmp_path, f'emotion,pixels,Usage\n{GOOD_ROW}\n\n{GOOD_ROW}\n')
  with pytest.raises(fer_sources.DataFormatError, match='line 3: empty line'):
    read_all(path)


def test_good_rows_parse_exactly(tmp_path, fer_rows):
  path = fakedata.write_fer_csv(tmp_path / 'fer2013.csv', fer_rows)
  got = read_all(str(path))
  assert len(got) == len(fer_rows)
  for example, (label, pixels, usage) in zip(got, fer_rows):
    assert example.label == label
    assert example.split == fer_sources.USAGE_TO_SPLIT[usage]
    np.testing.assert_array_equal(example.image[..., 0], pixels)


def test_tar_without_the_csv(tmp_path):
  import tarfile

  path = tmp_path / 'fer2013.tar.gz'
  with tarfile.open(path, 'w:gz') as tar:
    readme = tmp_path / 'README'
    readme.write_text('hi')
    tar.add(readme, arcname='fer2013/README')
  with pytest.raises(
    fer_sources.DataFormatError, match='no fer2013.csv inside the archive'
  ):
    read_all(str(path))


def test_tar_errors_name_the_member(tmp_path, fer_rows):
  rows = list(fer_rows)
  rows[2] = (9, rows[2][1], rows[2][2])
  path = fakedata.write_fer_tar(tmp_path / 'fer2013.tar.gz', rows)
  with pytest.raises(
    fer_sources.DataFormatError,
    match=r'fer2013.tar.gz:fer2013/fer2013.csv line 4: '
    r"unknown emotion id '9'",
  ):
    read_all(str(path))


def test_folder_release_errors_name_the_file(tmp_path, fer_rows):
  root = fakedata.write_folder_release(tmp_path / 'release', fer_rows[:10])
  angry = os.path.join(root, 'train', 'angry')
  os.makedirs(angry, exist_ok=True)
  broken = os.path.join(angry, 'Training_99999.jpg')
  with open(broken, 'wb') as f:
    f.write(b'not a jpeg')
  with pytest.raises(
    fer_sources.DataFormatError, match=f'{broken}: unreadable image'
  ):
    list(fer_sources.read_folder_release(str(root)))
  os.remove(broken)
  misplaced = os.path.join(angry, 'PublicTest_00001.png')
  from PIL import Image

  Image.fromarray(np.zeros((48, 48), np.uint8)).save(misplaced)
  with pytest.raises(
    fer_sources.DataFormatError,
    match=f'{misplaced}: the file name does not say its split',
  ):
    list(fer_sources.read_folder_release(str(root)))
  os.remove(misplaced)
  small = os.path.join(angry, 'Training_00002.png')
  Image.fromarray(np.zeros((40, 48), np.uint8)).save(small)
  with pytest.raises(
    fer_sources.DataFormatError,
    match=f'{small}: image is 48x40; expected 48x48',
  ):
    list(fer_sources.read_folder_release(str(root)))
  os.remove(small)
  os.makedirs(os.path.join(root, 'test', 'contempt'))
  with pytest.raises(
    fer_sources.DataFormatError, match="unknown class folder 'contempt'"
  ):
    list(fer_sources.read_folder_release(str(root)))


def test_folder_names_map_to_csv_ids_not_alphabetical_order():
  # Alphabetical: angry disgust fear happy neutral sad surprise.
  assert fer_sources.FOLDER_TO_LABEL['neutral'] == 6
  assert fer_sources.FOLDER_TO_LABEL['sad'] == 4
  assert fer_sources.FOLDER_TO_LABEL['surprise'] == 5


def test_missing_release_lists_every_path_looked_at(tmp_path):
  with pytest.raises(FileNotFoundError) as info:
    fer_sources.find_release(str(tmp_path))
  for name in (
    'fer2013.csv',
    'fer2013.tar.gz',
    'icml_face_data.csv',
    'train',
    'test',
  ):
    assert str(tmp_path / name) in str(info.value)
  assert 'Kaggle login' in str(info.value)


@pytest.mark.parametrize(
  'votes,label',
  [
    ([7, 2, 1, 0, 0, 0, 0, 0, 0, 0], 0),  # clear majority; the 1 is an outlier
    ([0, 4, 4, 0, 0, 0, 0, 0, 1, 1], None),  # tie
    ([0, 0, 0, 0, 0, 0, 0, 0, 6, 4], None),  # 'unknown' on top
    ([1, 1, 1, 1, 1, 1, 1, 1, 1, 1], None),  # all outliers
    ([0, 5, 4, 1, 0, 0, 0, 0, 0, 0], 1),  # 5 of 9 after dropping the 1
    ([0, 4, 4, 1, 0, 0, 0, 0, 0, 0], None),
  ],
)
def test_ferplus_majority_mode(votes, label):
  assert fer_sources.ferplus_majority(np.array(votes)) == label


def _dist(**shares):
  """[8] target from {emotion index name 'e<k>': share}."""
  out = np.zeros(8)
  for key, value in shares.items():
    out[int(key[1:])] = value
  return out


# votes -> (majority, probability = crossentropy, multi_target), worked by hand
# from microsoft/FERPlus `_process_data` + `load_folders`; None: not trained.
FERPLUS_TARGET_CASES = {
  'clear_majority': (
    [7, 2, 1, 0, 0, 0, 0, 0, 0, 0],  # S=9 after the 1
    _dist(e0=1),
    _dist(e0=1),
    _dist(e0=1),
  ),
  'majority_and_a_second': (
    [6, 3, 1, 0, 0, 0, 0, 0, 0, 0],  # S=9, 6<6.75
    _dist(e0=1),
    _dist(e0=2 / 3, e1=1 / 3),
    _dist(e0=2 / 3, e1=1 / 3),
  ),
  'tie': (
    [0, 4, 4, 0, 0, 0, 0, 0, 1, 1],
    None,
    _dist(e1=0.5, e2=0.5),
    _dist(e1=0.5, e2=0.5),
  ),
  'unknown_on_top': ([0, 0, 0, 0, 0, 0, 0, 0, 6, 4], None, None, None),
  # S=10: unknown taken first (5 <= 5: unknown); multi_target's top is
  # unknown (>= 30%: 3 and 5).
  'unknown_above_an_emotion': (
    [3, 0, 0, 0, 0, 0, 0, 0, 5, 2],
    None,
    None,
    None,
  ),
  # S=8: NF ties neutral; probability drops NF, 4 <= 0.5*8; multi_target
  # keeps both and neutral (first) is the top.
  'nf_ties_an_emotion': (
    [4, 0, 0, 0, 0, 0, 0, 0, 0, 4],
    None,
    None,
    _dist(e0=1),
  ),
  # S=11: 5, then 3 (happiness) and 3 (unknown, dropped: came after an
  # emotion); 8 > 5.5. multi_target keeps only 5 (>= 3.3): 5 <= 5.5.
  'unknown_ties_the_second': (
    [5, 3, 0, 0, 0, 0, 0, 0, 3, 0],
    None,
    _dist(e0=0.625, e1=0.375),
    None,
  ),
  'three_way_split': (
    [4, 3, 3, 0, 0, 0, 0, 0, 0, 0],
    None,
    _dist(e0=0.4, e1=0.3, e2=0.3),
    _dist(e0=0.4, e1=0.3, e2=0.3),
  ),
  # S=9: 5, then the two 2s together (3 classes); multi_target: only 5
  # reaches 2.7.
  'majority_and_two_ties': (
    [5, 2, 2, 1, 0, 0, 0, 0, 0, 0],
    _dist(e0=1),
    _dist(e0=5 / 9, e1=2 / 9, e2=2 / 9),
    _dist(e0=1),
  ),
  # S=10: 3 and 3, then the two 2s make 4 classes (> 3).
  'four_way_split': (
    [3, 3, 2, 2, 0, 0, 0, 0, 0, 0],
    None,
    None,
    _dist(e0=0.5, e1=0.5),
  ),
  'ones_dropped': (
    [1, 1, 1, 1, 1, 1, 4, 0, 1, 0],  # S=4
    _dist(e6=1),
    _dist(e6=1),
    _dist(e6=1),
  ),
  'all_ones': ([1] * 10, None, None, None),
  'all_zero': ([0] * 10, None, None, None),
}


@pytest.mark.parametrize('case', FERPLUS_TARGET_CASES)
def test_ferplus_target_modes(case):
  votes, majority, soft, multi = FERPLUS_TARGET_CASES[case]
  want = {
    'majority': majority,
    'probability': soft,
    'crossentropy': soft,
    'multi_target': multi,
  }
  assert set(want) == set(fer_sources.FERPLUS_LABEL_MODES)
  for mode, target in want.items():
    got = fer_sources.ferplus_target(np.array(votes), mode)
    if target is None:
      assert got is None, mode
    else:
      np.testing.assert_allclose(got, target, atol=1e-12, err_msg=mode)
  majority_label = fer_sources.ferplus_majority(np.array(votes))
  assert majority_label == (
    None if majority is None else int(np.argmax(majority))
  )


def test_ferplus_target_rejects_unknown_mode_and_bad_votes():
  with pytest.raises(ValueError, match="'soft'"):
    fer_sources.ferplus_target(np.zeros(10), 'soft')
  with pytest.raises(ValueError, match='8 counts; expected 10'):
    fer_sources.ferplus_target(np.zeros(8), 'majority')


def test_ferplus_bad_vote_and_usage_mismatch(tmp_path, fer_rows):
  rows = fer_rows[:4]
  fer = fakedata.write_fer_csv(tmp_path / 'fer2013.csv', rows)
  votes = fakedata.ferplus_votes(rows)
  path = fakedata.write_ferplus_csv(tmp_path / 'fer2013new.csv', rows, votes)
  lines = open(path).read().splitlines()
  fields = lines[2].split(',')
  fields[4] = 'x'
  lines[2] = ','.join(fields)
  open(path, 'w').write('\n'.join(lines) + '\n')
  with pytest.raises(
    fer_sources.DataFormatError,
    match=r"fer2013new.csv line 3: surprise vote count 'x'",
  ):
    fer_sources.join_ferplus(str(fer), str(path))
  swapped = [
    (l, p, 'PrivateTest' if u == 'Training' else 'Training') for l, p, u in rows
  ]
  fakedata.write_ferplus_csv(path, swapped, votes)
  with pytest.raises(
    fer_sources.DataFormatError,
    match='fer2013new.csv line 2: Usage .* does not match',
  ):
    fer_sources.join_ferplus(str(fer), str(path))
