"""TFDS builders on generated files: every FER2013 release, FER+, digits."""

import collections
import os
import shutil

import numpy as np
import pytest

tfds = pytest.importorskip('tensorflow_datasets')

from densenet_flax.data import fer_sources  # noqa: E402
from densenet_flax.datasets import prepare  # noqa: E402

import fakedata  # noqa: E402

SPLIT_OF_USAGE = fer_sources.USAGE_TO_SPLIT


def examples(builder, split, *keys):
  ds = builder.as_dataset(split=split, shuffle_files=False)
  return [tuple(ex[k] for k in keys) for ex in tfds.as_numpy(ds)]


def as_multiset(pairs):
  return collections.Counter(
    (img.tobytes(), int(label)) for img, label in pairs
  )


@pytest.fixture
def rows(fer_rows):
  return fer_rows


@pytest.fixture
def fer_from_csv(fer_dirs):
  data_dir, manual_dir = fer_dirs
  return prepare.load_builder(
    'fer2013', data_dir=data_dir, manual_dir=manual_dir
  )


def test_csv_build_has_the_splits_labels_and_exact_pixels(fer_from_csv, rows):
  info = fer_from_csv.info
  assert info.features['label'].names == list(fer_sources.EMOTIONS)
  assert info.features['image'].shape == (48, 48, 1)
  for usage, split in SPLIT_OF_USAGE.items():
    want = [
      (pixels[..., None], label) for label, pixels, u in rows if u == usage
    ]
    got = examples(fer_from_csv, split, 'image', 'label')
    assert info.splits[split].num_examples == len(want) == len(got)
    assert sorted({label for _, label in got}) == list(range(7))
    assert as_multiset(got) == as_multiset(want)  # pixels round-trip exactly


@pytest.mark.parametrize('release', ['tar', 'icml', 'folder'])
def test_every_release_gives_identical_examples(
  release, rows, fer_from_csv, tmp_path
):
  manual = tmp_path / 'manual'
  os.makedirs(manual)
  if release == 'tar':
    fakedata.write_fer_tar(manual / 'fer2013.tar.gz', rows)
  elif release == 'icml':
    fakedata.write_icml_csv(manual / 'icml_face_data.csv', rows)
  else:
    fakedata.write_folder_release(manual, rows)
  builder = prepare.load_builder(
    'fer2013', data_dir=str(tmp_path / 'data'), manual_dir=str(manual)
  )
  for split in SPLIT_OF_USAGE.values():
    want = examples(fer_from_csv, split, 'image', 'label')
    got = examples(builder, split, 'image', 'label')
    assert as_multiset(got) == as_multiset(want)
    if release != 'folder':  # same row keys, hence the same stored order
      assert [(i.tobytes(), l) for i, l in got] == [
        (i.tobytes(), l) for i, l in want
      ]


def test_folder_release_jpegs_decode_close_to_the_pixels(rows, tmp_path):
  """The real folder release is JPEG: lossy, so compare with a tolerance."""
  smooth = [
    (label, np.full((48, 48), 40 * label + 10, np.uint8), usage)
    for label, _, usage in rows
  ]
  fakedata.write_folder_release(tmp_path, smooth, suffix='.jpg')
  got = list(fer_sources.read_folder_release(str(tmp_path)))
  assert len(got) == len(rows)
  for example in got:
    assert (
      np.abs(example.image.astype(int) - (40 * example.label + 10)).max() <= 2
    )


def test_missing_manual_files_give_instructions_and_paths(tmp_path):
  manual = tmp_path / 'manual'
  os.makedirs(manual)
  (manual / 'notes.txt').write_text('not the data')
  with pytest.raises(FileNotFoundError) as info:
    prepare.load_builder(
      'fer2013', data_dir=str(tmp_path / 'data'), manual_dir=str(manual)
    )
  message = str(info.value)
  assert str(manual / 'fer2013.csv') in message
  assert 'kaggle.com' in message
  shutil.rmtree(manual)
  with pytest.raises(FileNotFoundError, match=f'{manual} does not exist'):
    prepare.load_builder(
      'fer2013', data_dir=str(tmp_path / 'data'), manual_dir=str(manual)
    )


def test_a_malformed_row_fails_the_build_naming_file_and_line(rows, tmp_path):
  manual = tmp_path / 'manual'
  os.makedirs(manual)
  path = fakedata.write_fer_csv(manual / 'fer2013.csv', rows)
  lines = open(path).read().splitlines()
  lines[5] = (
    lines[5]
    .replace('Training', 'Validation')
    .replace('PublicTest', 'Validation')
    .replace('PrivateTest', 'Validation')
  )
  open(path, 'w').write('\n'.join(lines) + '\n')
  with pytest.raises(
    fer_sources.DataFormatError,
    match=r"fer2013.csv line 6: unknown Usage 'Validation'",
  ):
    prepare.load_builder(
      'fer2013', data_dir=str(tmp_path / 'data'), manual_dir=str(manual)
    )
  # Nothing half-written is left to be mistaken for a prepared dataset.
  assert not tfds.builder(
    'fer2013', data_dir=str(tmp_path / 'data')
  ).is_prepared()


def test_ferplus_keeps_every_face_and_flags_the_majority_ones(rows, tmp_path):
  manual = tmp_path / 'manual'
  os.makedirs(manual)
  fakedata.write_fer_csv(manual / 'fer2013.csv', rows)
  votes = fakedata.ferplus_votes(rows)
  fakedata.write_ferplus_csv(manual / 'fer2013new.csv', rows, votes)
  builder = prepare.load_builder(
    'ferplus', data_dir=str(tmp_path / 'data'), manual_dir=str(manual)
  )
  assert str(builder.version) == '1.1.0'
  assert builder.info.features['label'].names == list(
    fer_sources.FERPLUS_EMOTIONS
  )
  excluded = builder.info.metadata['excluded']
  no_majority = builder.info.metadata['no_majority']
  for usage, split in SPLIT_OF_USAGE.items():
    want = collections.Counter()
    reasons = collections.Counter()
    ties = 0
    for (_, pixels, u), v in zip(rows, votes):
      if u != usage:
        continue
      if v[9] == 10:
        reasons['not_a_face'] += 1
        continue
      tie = np.sort(v)[-1] == np.sort(v)[-2]
      ties += tie
      # A tie's label is its first top emotion vote, flagged not a majority.
      want[
        (
          pixels[..., None].tobytes(),
          int(np.argmax(v)),
          tuple(v.tolist()),
          not tie,
        )
      ] += 1
    got = examples(builder, split, 'image', 'label', 'votes', 'majority')
    assert (
      collections.Counter(
        (i.tobytes(), int(l), tuple(v.tolist()), bool(m)) for i, l, v, m in got
      )
      == want
    )
    assert excluded[split] == dict(reasons)
    assert no_majority[split] == ties and ties > 0
    assert builder.info.splits[split].num_examples == sum(want.values())
    assert sum(want.values()) + sum(reasons.values()) == sum(
      u == usage for _, _, u in rows
    )


def test_ferplus_prepared_at_1_0_0_asks_to_prepare_again(rows, tmp_path):
  manual = tmp_path / 'manual'
  os.makedirs(manual)
  fakedata.write_fer_csv(manual / 'fer2013.csv', rows)
  fakedata.write_ferplus_csv(
    manual / 'fer2013new.csv', rows, fakedata.ferplus_votes(rows)
  )
  data_dir = tmp_path / 'data'
  builder = prepare.load_builder(
    'ferplus', data_dir=str(data_dir), manual_dir=str(manual)
  )
  # Make it look like data prepared by the 1.0.0 builder.
  old = data_dir / 'ferplus' / '1.0.0'
  os.rename(builder.data_dir, old)
  info = (old / 'dataset_info.json').read_text()
  (old / 'dataset_info.json').write_text(
    info.replace('"version": "1.1.0"', '"version": "1.0.0"')
  )
  with pytest.raises(FileNotFoundError) as error:
    prepare.load_builder(
      'ferplus',
      data_dir=str(data_dir),
      manual_dir=str(tmp_path / 'no_manual_files'),
    )
  message = str(error.value)
  assert 'at version 1.0.0 only; this code reads version 1.1.0' in message
  assert 'python -m densenet_flax.datasets.prepare ferplus' in message
  assert 'fer2013new.csv' in message  # and what the manual dir needs
  # With the source files at hand, 1.1.0 is prepared beside it.
  assert (
    str(
      prepare.load_builder(
        'ferplus', data_dir=str(data_dir), manual_dir=str(manual)
      ).version
    )
    == '1.1.0'
  )


def test_ferplus_needs_the_rows_in_the_same_order(rows, tmp_path):
  path = fakedata.write_fer_csv(tmp_path / 'fer2013.csv', rows)
  votes_path = fakedata.write_ferplus_csv(
    tmp_path / 'fer2013new.csv', rows[:-1], fakedata.ferplus_votes(rows)
  )
  with pytest.raises(fer_sources.DataFormatError, match='different row counts'):
    fer_sources.join_ferplus(str(path), str(votes_path))


def test_digits_builder_offline(digits_dir):
  builder = prepare.load_builder('digits', data_dir=digits_dir)
  splits = builder.info.splits
  assert splits['train'].num_examples == 1438
  assert splits['test'].num_examples == 359
  got = examples(builder, 'test', 'image', 'label')
  labels = np.array([label for _, label in got])
  assert set(labels.tolist()) == set(range(10))
  images = np.stack([image for image, _ in got])
  assert images.shape == (359, 8, 8, 1) and images.max() == 255


def test_catalogue_dataset_offline_fails_fast(tmp_path, monkeypatch):
  import time

  monkeypatch.setattr(prepare, '_reachable', lambda url: False)
  start = time.monotonic()
  with pytest.raises(FileNotFoundError) as info:
    prepare.load_builder('cifar10', data_dir=str(tmp_path))
  assert time.monotonic() - start < 10
  message = str(info.value)
  assert 'www.cs.toronto.edu unreachable' in message
  assert str(tmp_path / 'cifar10') in message


def test_catalogue_dataset_with_manual_files_names_them(tmp_path):
  with pytest.raises(FileNotFoundError) as info:
    prepare.load_builder(
      'imagenet2012',
      data_dir=str(tmp_path),
      manual_dir=str(tmp_path / 'manual'),
    )
  assert str(tmp_path / 'manual' / 'ILSVRC2012_img_train.tar') in str(
    info.value
  )
