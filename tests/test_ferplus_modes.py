"""FER+ label modes end to end: the real builder, the pipeline's rows, targets.

A synthetic fer2013.csv + fer2013new.csv pair: row i's image is constant
(pixel value 4 * i + 10, so any crop or flip of it still says which row it
is), and its votes cycle through cases each mode treats differently.
"""

import collections
import os

import ml_collections
import numpy as np
import pytest

tf = pytest.importorskip('tensorflow')

from densenet_flax import config_keys  # noqa: E402
from densenet_flax import config_checks  # noqa: E402
from densenet_flax.data import fer_sources  # noqa: E402
from densenet_flax.data import pipeline  # noqa: E402
from densenet_flax.datasets import prepare  # noqa: E402

import fakedata  # noqa: E402

MODES = fer_sources.FERPLUS_LABEL_MODES
USAGES = ('Training', 'Training', 'PublicTest', 'PrivateTest')
VOTES = [
  [7, 2, 1, 0, 0, 0, 0, 0, 0, 0],  # clear majority
  [6, 3, 1, 0, 0, 0, 0, 0, 0, 0],  # majority; the soft modes add a second
  [0, 4, 4, 0, 0, 0, 0, 0, 1, 1],  # tie
  [0, 0, 0, 0, 0, 0, 0, 0, 6, 4],  # unknown on top: never trained
  [4, 0, 0, 0, 0, 0, 0, 0, 0, 4],  # NF ties an emotion: multi_target only
  [5, 3, 0, 0, 0, 0, 0, 0, 3, 0],  # unknown ties the second: soft only
  [0, 4, 3, 3, 0, 0, 0, 0, 0, 0],  # 3-way split
  [0, 0, 5, 2, 2, 1, 0, 0, 0, 0],  # majority, 3 classes in the soft modes
  [0, 0, 0, 3, 3, 2, 2, 0, 0, 0],  # 4-way split: multi_target only
  [0, 0, 0, 0, 0, 0, 0, 0, 0, 10],  # not a face (empty image name)
  [0, 0, 0, 0, 2, 2, 0, 6, 0, 0],  # majority contempt
  [0, 0, 0, 0, 0, 4, 6, 0, 0, 0],  # majority fear, 40% disgust
  [0, 0, 0, 0, 0, 0, 0, 0, 0, 0],  # no votes at all
]
NUM_ROWS = 4 * len(VOTES)  # every case in every split


def pixel_of(row):
  return 4 * row + 10


@pytest.fixture(scope='module')
def ferplus_dirs(tmp_path_factory):
  root = tmp_path_factory.mktemp('ferplus')
  manual = root / 'manual'
  os.makedirs(manual)
  rows = [
    (i % 7, np.full((48, 48), pixel_of(i), np.uint8), USAGES[i % 4])
    for i in range(NUM_ROWS)
  ]
  votes = [np.array(VOTES[i % len(VOTES)]) for i in range(NUM_ROWS)]
  fakedata.write_fer_csv(manual / 'fer2013.csv', rows)
  fakedata.write_ferplus_csv(manual / 'fer2013new.csv', rows, votes)
  prepare.load_builder(
    'ferplus', data_dir=str(root / 'data'), manual_dir=str(manual)
  )
  return str(root / 'data'), str(manual)


def make_config(dirs, mode, **overrides):
  config = ml_collections.ConfigDict(
    dict(
      dataset='ferplus',
      data_dir=dirs[0],
      manual_dir=dirs[1],
      batch_size=4,
      eval_batch_size=4,
      seed=0,
      image_size=44,
      channels=1,
      label_mode=mode,
      augment=dict(
        crop='random', crop_padding=0, resize=0, flip=True, rotation=0.0
      ),
    )
  )
  config.update(overrides)
  return config


def split_rows(usage):
  return [
    i
    for i in range(NUM_ROWS)
    if USAGES[i % 4] == usage and VOTES[i % len(VOTES)][9] != 10
  ]


def expected_targets(usage, mode):
  """{row: [8] target} of the rows of `usage` that train in `mode`."""
  out = {}
  for i in split_rows(usage):
    target = fer_sources.ferplus_target(np.array(VOTES[i % len(VOTES)]), mode)
    if target is not None:
      out[i] = target
  return out


def rows_of(images, data):
  """Row ids of stored or normalised images (constant: a crop says the row)."""
  pixels = np.asarray(images)[..., 0]
  pixels = pixels.reshape(len(pixels), int(np.prod(pixels.shape[1:])))
  values = (
    pixels.astype(float)
    if pixels.dtype == np.uint8
    else np.rint((pixels * data.std[0] + data.mean[0]) * 255)
  )
  assert (values == values[:, :1]).all()
  rows = (values[:, 0] - 10) / 4
  assert (rows == np.rint(rows)).all()
  return rows.astype(int)


def flat(batch, key):
  value = batch[key]
  return value.reshape(-1, *value.shape[2:])


def test_the_cases_differ_between_modes():
  trained = {mode: set(expected_targets('Training', mode)) for mode in MODES}
  assert trained['majority'] < trained['probability']
  assert trained['probability'] == trained['crossentropy']
  assert trained['multi_target'] - trained['probability']
  assert trained['probability'] - trained['multi_target']


@pytest.mark.parametrize('mode', MODES)
def test_train_rows_targets_and_majority_eval_per_mode(ferplus_dirs, mode):
  data = pipeline.InputPipeline(make_config(ferplus_dirs, mode), num_devices=2)
  want = expected_targets('Training', mode)
  # The stored training rows of the mode, with their targets.
  rows = data._rows('train', train=True)
  got = rows_of(rows['image'], data)
  assert sorted(got) == sorted(want)
  assert data.split_size('train', train=True) == len(want)
  np.testing.assert_array_equal(
    rows['label'], [np.argmax(want[i]) for i in got]
  )
  if mode == 'majority':
    assert 'target' not in rows
  else:
    np.testing.assert_allclose(
      rows['target'], [want[i] for i in got], rtol=1e-6
    )
  np.testing.assert_array_equal(
    data.train_label_counts(),
    np.bincount([np.argmax(t) for t in want.values()], minlength=8),
  )
  # Normalised by the mode's training rows.
  assert data.mean[0] == pytest.approx(
    np.mean([pixel_of(i) for i in want]) / 255, rel=1e-6
  )
  # One epoch of training batches.
  assert data.steps_per_epoch == len(want) // 4
  seen = []
  for _, batch in zip(range(data.steps_per_epoch), data.train_batches()):
    assert ('target' in batch) == (mode != 'majority')
    labels = flat(batch, 'label')
    for i, label, target in zip(
      rows_of(flat(batch, 'image'), data),
      labels,
      flat(batch, 'target') if 'target' in batch else [None] * len(labels),
    ):
      seen.append(i)
      if mode == 'probability':  # a one-hot draw from the row's distribution
        assert target.dtype == np.float32 and target.shape == (8,)
        np.testing.assert_array_equal(target, np.eye(8)[label])
        assert want[i][label] > 0
      else:
        assert label == np.argmax(want[i])
        if target is not None:
          np.testing.assert_allclose(target, want[i], rtol=1e-6)
  assert len(set(seen)) == len(seen) == data.steps_per_epoch * 4
  # Every evaluated split: the majority rows with their majority labels.
  for usage, split in fer_sources.USAGE_TO_SPLIT.items():
    majority = expected_targets(usage, 'majority')
    got = collections.Counter()
    batches = list(data.eval_batches(split))
    assert (
      len(batches) == data.num_eval_batches(split) == -(-len(majority) // 4)
    )
    for batch in batches:
      assert set(batch) == {'image', 'label', 'mask'}
      mask = flat(batch, 'mask')
      got.update(
        zip(
          rows_of(flat(batch, 'image')[mask], data).tolist(),
          flat(batch, 'label')[mask].tolist(),
        )
      )
    assert got == collections.Counter(
      {(i, int(np.argmax(t))): 1 for i, t in majority.items()}
    )
    assert data.split_size(split) == len(majority)


def test_eval_shards_of_the_majority_rows_over_processes(ferplus_dirs):
  config = make_config(
    ferplus_dirs, 'crossentropy', batch_size=3, eval_batch_size=3
  )
  whole = pipeline.InputPipeline(config, num_devices=1)
  want = sorted(
    rows_of(
      np.concatenate(
        [flat(b, 'image')[flat(b, 'mask')] for b in whole.eval_batches('train')]
      ),
      whole,
    )
  )
  union, counts = [], set()
  for index in range(3):
    data = pipeline.InputPipeline(
      config, num_devices=1, process_index=index, process_count=3
    )
    batches = list(data.eval_batches('train'))
    counts.add(len(batches))
    for b in batches:
      union.extend(rows_of(flat(b, 'image')[flat(b, 'mask')], data))
  assert (
    sorted(union) == want == sorted(expected_targets('Training', 'majority'))
  )
  assert len(counts) == 1


def labels_and_targets(batches):
  return [(b['label'].reshape(-1), b['target'].reshape(-1, 8)) for b in batches]


def test_probability_draws_are_deterministic_global_and_vary(ferplus_dirs):
  config = make_config(ferplus_dirs, 'probability')
  data = pipeline.InputPipeline(config, num_devices=1)
  steps = data.steps_per_epoch
  it = data.train_batches()
  run = [next(it) for _ in range(8 * steps)]
  # Same seed, same draws; a restart continues them exactly.
  again = pipeline.InputPipeline(config, num_devices=2).train_batches(
    start_step=steps + 1
  )
  for x, y in zip(
    labels_and_targets(run[steps + 1 : steps + 4]),
    labels_and_targets([next(again) for _ in range(3)]),
  ):
    np.testing.assert_array_equal(x[0], y[0])
    np.testing.assert_array_equal(x[1], y[1])
  # Two processes draw exactly the global batch's labels.
  halves = [
    pipeline.InputPipeline(
      config, num_devices=1, process_index=p, process_count=2
    ).train_batches()
    for p in range(2)
  ]
  for batch in run[:3]:
    parts = [next(h) for h in halves]
    np.testing.assert_array_equal(
      np.concatenate([p['label'].reshape(-1) for p in parts]),
      batch['label'].reshape(-1),
    )
  # Across epochs a row's label varies, never onto a class it has no votes for.
  want = expected_targets('Training', 'probability')
  drawn = collections.defaultdict(set)
  for batch in run:
    for i, label in zip(
      rows_of(flat(batch, 'image'), data), flat(batch, 'label')
    ):
      assert want[i][label] > 0
      drawn[i].add(int(label))
  assert any(len(labels) > 1 for labels in drawn.values())
  other_seed = pipeline.InputPipeline(
    make_config(ferplus_dirs, 'probability', seed=1), num_devices=1
  ).train_batches()
  assert not all(
    np.array_equal(x['label'], next(other_seed)['label']) for x in run[:3]
  )


def test_probability_draws_follow_the_distribution(ferplus_dirs):
  data = pipeline.InputPipeline(
    make_config(ferplus_dirs, 'probability'), num_devices=1
  )
  targets = np.array(
    [
      [0.5, 0.5, 0, 0, 0, 0, 0, 0],
      [0, 0.4, 0, 0, 0.3, 0, 0.3, 0],
      [0, 0, 5 / 9, 2 / 9, 0, 0, 0, 2 / 9],
    ],
    np.float32,
  )
  repeats = 600
  target = np.repeat(targets, repeats, axis=0)
  n = len(target)
  image = np.full((n, 48, 48, 1), 100, np.uint8)
  ds = tf.data.Dataset.from_tensor_slices(
    (np.arange(n, dtype=np.int64), image, np.zeros(n, np.int64), target)
  )
  out = next(ds.map(data._train_map(epoch=3)).batch(n).as_numpy_iterator())
  labels = out['label'].reshape(len(targets), repeats)
  for want, drawn in zip(targets, labels):
    freq = np.bincount(drawn, minlength=8) / repeats
    assert (freq[want == 0] == 0).all()
    np.testing.assert_allclose(freq, want, atol=0.07)
  np.testing.assert_array_equal(out['target'], np.eye(8)[out['label']])


def test_label_mode_is_validated():
  config = config_keys.base_config()
  config.train_split, config.eval_split = 'train', 'public_test'
  config.dataset, config.label_mode = 'ferplus', 'soft'
  with pytest.raises(
    ValueError,
    match=r"config.label_mode='soft': expected "
    r"one of 'majority', 'probability'",
  ):
    config_checks.validate(config)
  config.dataset, config.label_mode = 'fer2013', 'crossentropy'
  with pytest.raises(
    ValueError,
    match=r"config.label_mode='crossentropy': "
    r"expected 'majority' for dataset "
    r"'fer2013'",
  ):
    config_checks.validate(config)
  for mode in MODES:
    config.dataset, config.label_mode = 'ferplus', mode
    config_checks.validate(config)


@pytest.mark.parametrize(
  'mode', ['probability', pytest.param('multi_target', marks=pytest.mark.slow)]
)
def test_a_run_trains_in_the_mode_and_evaluates_on_majority_labels(
  ferplus_dirs, tmp_path, mode
):
  """train.py end to end: the step sees the mode's targets, evaluate.py the
  majority rows, and both agree on the checkpoint."""
  import trainutil
  from densenet_flax import evaluation
  from densenet_flax import training

  config = trainutil.tiny_config(
    ferplus_dirs[0],
    dataset='ferplus',
    manual_dir=ferplus_dirs[1],
    label_mode=mode,
    train_split='train',
    eval_split='public_test',
    test_split='private_test',
    image_size=16,
    batch_size=4,
    eval_batch_size=4,
    num_epochs=2,
    warmup_epochs=0.0,
    **{'augment.resize': 16, 'augment.crop': 'random'},
  )
  summary = training.train_and_evaluate(config, str(tmp_path))
  trained = len(expected_targets('Training', mode))
  assert summary['step'] == 2 * (trained // 4)
  majority = len(expected_targets('PrivateTest', 'majority'))
  assert summary['test']['num_examples'] == majority
  report = evaluation.evaluate(str(tmp_path), 'latest', 'public_test')
  assert report['num_examples'] == len(
    expected_targets('PublicTest', 'majority')
  )
  assert report['accuracy'] == summary['eval']['accuracy']
  assert report['loss'] == summary['eval']['loss']
