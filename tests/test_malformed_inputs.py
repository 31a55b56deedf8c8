"""A corpus of broken FER2013 / FER+ files, and fuzzing of the readers.

Every way a CSV, archive or folder release can be wrong gives a
DataFormatError that names the file (and the line, for row errors); random
mutations of a valid file give exactly the examples an independent reading
of the documented format finds, or such an error, and never anything else.
"""

import csv
import gzip
import io
import os
import zipfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from densenet_flax.data import fer_sources

import fakedata

HEADER = 'emotion,pixels,Usage'
PIXELS = ' '.join(['7'] * 2304)
ROW = f'3,{PIXELS},Training'
VALID = f'{HEADER}\n{ROW}\n{ROW}\n'
FILE_LEVEL = (
  'the file is empty',
  'no rows after the header',
  'the file is ',
  'unreadable archive',
  'have different row counts',
  'the folder release has no images',
)


def assert_located(error, path):
  """The message starts with the file and names a line or a file-level fault."""
  message = str(error)
  assert message.startswith(str(path)), message
  assert ' line ' in message or any(p in message for p in FILE_LEVEL), message


def write_bytes(tmp_path, data, name='fer2013.csv'):
  path = tmp_path / name
  path.write_bytes(data)
  return str(path)


def gzipped(text):
  return gzip.compress(text.encode())


def zipped(text):
  buffer = io.BytesIO()
  with zipfile.ZipFile(buffer, 'w') as z:
    z.writestr('fer2013.csv', text)
  return buffer.getvalue()


@pytest.mark.parametrize(
  'data,message',
  [
    (b'', 'the file is empty'),
    (f'{HEADER}\n'.encode(), 'no rows after the header'),
    (b'\x00\x01\xff\xfe binary \x80\x81', 'line 1: not UTF-8 text'),
    (
      f'{HEADER}\n{ROW}\n3,7 7 \xff,Training\n'.encode('latin-1'),
      'line 3: not UTF-8 text',
    ),
    (gzipped(VALID), 'the file is gzip-compressed'),
    (zipped(VALID), 'the file is a zip archive'),
    (VALID[: len(VALID) // 2].encode(), 'line 2: 2 fields; expected 3'),
    (f'{HEADER}\n{ROW},extra\n'.encode(), 'line 2: 4 fields; expected 3'),
    (f'{HEADER}\n3,{PIXELS}\n'.encode(), 'line 2: 2 fields; expected 3'),
    (f'{HEADER}\n9,{PIXELS},Training\n'.encode(), "unknown emotion id '9'"),
    (f'{HEADER}\n-1,{PIXELS},Training\n'.encode(), "unknown emotion id '-1'"),
    (f'{HEADER}\nx,{PIXELS},Training\n'.encode(), "unknown emotion id 'x'"),
    (f'{HEADER}\n٣,{PIXELS},Training\n'.encode(), "unknown emotion id '٣'"),
    (
      f'{HEADER}\n3,{PIXELS[:-1]}300,Training\n'.encode(),
      'pixel value 300 is out of range',
    ),
    (
      f'{HEADER}\n3,{PIXELS[:-1]}a,Training\n'.encode(),
      "pixel value 'a' is not an integer",
    ),
    (
      f'{HEADER}\n3,{PIXELS[:-1]}٣,Training\n'.encode(),
      "pixel value '٣' is not an integer",
    ),
    (
      f'{HEADER}\n3,{PIXELS[:-1]}+7,Training\n'.encode(),
      "pixel value '+7' is not an integer",
    ),
    (
      f'{HEADER}\n3,{PIXELS},Validation\n'.encode(),
      "unknown Usage 'Validation'",
    ),
    (b'emotion,Usage\n3,Training\n', "missing column(s) ['pixels']"),
  ],
  ids=[
    'empty',
    'header_only',
    'binary',
    'binary_row',
    'gzip',
    'zip',
    'truncated',
    'extra_column',
    'missing_column_value',
    'label_9',
    'label_negative',
    'label_text',
    'label_unicode_digit',
    'pixel_300',
    'pixel_text',
    'pixel_unicode_digit',
    'pixel_signed',
    'usage',
    'no_pixels_column',
  ],
)
def test_fer2013_csv_corpus(tmp_path, data, message):
  path = write_bytes(tmp_path, data)
  with pytest.raises(fer_sources.DataFormatError) as info:
    list(fer_sources.read_csv_source(path))
  assert message in str(info.value)
  assert_located(info.value, path)


def test_a_truncated_archive_is_named(tmp_path, fer_rows):
  path = tmp_path / fer_sources.TAR_NAME
  fakedata.write_fer_tar(path, fer_rows)
  data = path.read_bytes()
  path.write_bytes(data[: len(data) // 2])
  with pytest.raises(
    fer_sources.DataFormatError, match='unreadable archive'
  ) as info:
    list(fer_sources.read_csv_source(str(path)))
  assert_located(info.value, path)


@pytest.mark.parametrize(
  'change,message',
  [
    (lambda votes: votes[:-1], 'have different row counts'),
    (lambda votes: votes + votes[-1:], 'have different row counts'),
  ],
  ids=['ferplus_shorter', 'ferplus_longer'],
)
def test_ferplus_file_of_another_length(tmp_path, fer_rows, change, message):
  fer = tmp_path / 'fer2013.csv'
  fakedata.write_fer_csv(fer, fer_rows)
  votes = tmp_path / fer_sources.FERPLUS_NAME
  fakedata.write_ferplus_csv(votes, fer_rows, fakedata.ferplus_votes(fer_rows))
  lines = votes.read_text().splitlines(keepends=True)
  votes.write_text(lines[0] + ''.join(change(lines[1:])))
  with pytest.raises(fer_sources.DataFormatError, match=message):
    fer_sources.join_ferplus(str(fer), str(votes))


@pytest.mark.parametrize(
  'body,message',
  [
    ('', 'no rows after the header'),
    (
      'Training,fer0000000.png,4,0,0,0,0,0,0,0,x,0\n',
      "line 2: unknown vote count 'x' is not a non-negative integer",
    ),
    (
      'Training,fer0000000.png,4,0,0,0,0,0,0,0,0\n',
      'line 2: 11 fields; expected 12',
    ),
    (
      'Validation,fer0000000.png,4,0,0,0,0,0,0,0,0,0\n',
      "line 2: unknown Usage 'Validation'",
    ),
  ],
  ids=['header_only', 'vote_text', 'missing_vote', 'usage'],
)
def test_ferplus_votes_corpus(tmp_path, body, message):
  header = 'Usage,Image name,' + ','.join(fer_sources.FERPLUS_VOTE_COLUMNS)
  path = write_bytes(
    tmp_path, f'{header}\n{body}'.encode(), fer_sources.FERPLUS_NAME
  )
  with pytest.raises(fer_sources.DataFormatError) as info:
    list(fer_sources.read_ferplus_votes(path))
  assert message in str(info.value)
  assert_located(info.value, path)


def test_folder_release_ignores_hidden_files_and_names_other_files(
  tmp_path, fer_rows
):
  fakedata.write_folder_release(tmp_path, fer_rows)
  clean = [
    (e.key, e.label) for e in fer_sources.read_folder_release(str(tmp_path))
  ]
  (tmp_path / 'train' / '.DS_Store').write_bytes(b'\x00\x01')
  (tmp_path / 'train' / 'happy' / '._Training_1.png').write_bytes(b'\x00')
  os.makedirs(tmp_path / 'test' / '.ipynb_checkpoints')
  assert [
    (e.key, e.label) for e in fer_sources.read_folder_release(str(tmp_path))
  ] == clean
  stray = tmp_path / 'train' / 'happy' / 'notes.txt'
  stray.write_text('not an image')
  with pytest.raises(
    fer_sources.DataFormatError, match='notes.txt: not an image'
  ):
    list(fer_sources.read_folder_release(str(tmp_path)))


def test_a_folder_release_without_images_is_named(tmp_path):
  for top in ('train/happy', 'test/sad'):
    os.makedirs(tmp_path / top)
  with pytest.raises(fer_sources.DataFormatError, match='has no images'):
    list(fer_sources.read_folder_release(str(tmp_path)))


# --- fuzzing -------------------------------------------------------------------


def _count(text):
  return text.isascii() and text.isdigit()


def fer_oracle(data: bytes):
  """The rows of a fer2013.csv by the documented format, or None if invalid.

  Written from the format (README, fer_sources docstring), not from the
  reader: UTF-8 CSV; header with emotion, pixels, Usage; at least one row;
  every row as wide as the header; emotion 0-6 and pixels 0-255 as plain
  digits, 2304 of them; Usage Training, PublicTest or PrivateTest.
  """
  try:
    text = data.decode('utf-8')
  except UnicodeDecodeError:
    return None
  try:
    rows = list(csv.reader(io.StringIO(text, newline='')))
  except csv.Error:
    return None
  if not rows:
    return None
  header = [h.strip() for h in rows[0]]
  if not {'emotion', 'pixels', 'Usage'} <= set(header) or len(rows) < 2:
    return None
  out = []
  for fields in rows[1:]:
    if len(fields) != len(header):
      return None
    row = dict(zip(header, fields))
    usage = row['Usage'].strip()
    label = row['emotion'].strip()
    pixels = row['pixels'].split()
    if (
      usage not in ('Training', 'PublicTest', 'PrivateTest')
      or not _count(label)
      or int(label) > 6
      or len(pixels) != 2304
      or not all(_count(p) and int(p) <= 255 for p in pixels)
    ):
      return None
    out.append((int(label), usage, [int(p) for p in pixels]))
  return out


BYTES = st.sampled_from(
  [
    b'0',
    b'7',
    b'9',
    b' ',
    b',',
    b'"',
    b'\n',
    b'\r',
    b'-',
    b'x',
    b'\xff',
    b'\x00',
    b'\t',
    b'3',
    b'25',
  ]
)
MUTATION = st.one_of(
  st.tuples(st.just('insert'), st.floats(0, 1), BYTES),
  st.tuples(st.just('replace'), st.floats(0, 1), BYTES),
  st.tuples(st.just('delete'), st.floats(0, 1), st.integers(1, 8)),
  st.tuples(st.just('truncate'), st.floats(0, 1), st.just(0)),
  st.tuples(st.just('duplicate_line'), st.floats(0, 1), st.just(0)),
  st.tuples(st.just('drop_line'), st.floats(0, 1), st.just(0)),
)


def mutate(data: bytes, mutations) -> bytes:
  for kind, where, arg in mutations:
    i = min(int(where * len(data)), max(len(data) - 1, 0))
    if kind == 'insert':
      data = data[:i] + arg + data[i:]
    elif kind == 'replace':
      data = data[:i] + arg + data[i + 1 :]
    elif kind == 'delete':
      data = data[:i] + data[i + arg :]
    elif kind == 'truncate':
      data = data[:i]
    else:
      lines = data.split(b'\n')
      j = min(int(where * len(lines)), len(lines) - 1)
      lines[j : j + 1] = [lines[j]] * (2 if kind == 'duplicate_line' else 0)
      data = b'\n'.join(lines)
  return data


# Three rows (three splits); most mutations land in the pixels.
FUZZ_TEXT = fakedata.fer_csv_text(
  fakedata.fer_rows(per_class=(1, 1, 1))[:3]
).encode()


@settings(
  max_examples=150,
  deadline=None,
  suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(mutations=st.lists(MUTATION, min_size=1, max_size=3))
def test_mutated_fer2013_csv_gives_the_oracles_rows_or_a_located_error(
  tmp_path, mutations
):
  data = mutate(FUZZ_TEXT, mutations)
  path = write_bytes(tmp_path, data)
  want = fer_oracle(data)
  try:
    got = [
      (e.label, e.split, e.image.ravel().tolist())
      for e in fer_sources.read_csv_source(path)
    ]
  except fer_sources.DataFormatError as e:
    assert want is None, f'rejected a valid file: {e}'
    assert_located(e, path)
    return
  assert want is not None, 'accepted an invalid file'
  split = {v: k for k, v in fer_sources.USAGE_TO_SPLIT.items()}
  assert [(label, split[s], pixels) for label, s, pixels in got] == want
