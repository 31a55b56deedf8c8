"""RAF-DB, AffectNet and class folders through training, on generated releases.

Each test writes a small release in its exact layout, prepares it with the
project's builders, and trains the recipes in configs/ shrunk to a tiny
DenseNet at 32 px: the validation carve, class-balanced draws, exact resume
and the reports (accuracy, balanced accuracy, how the checkpoint was
chosen).
"""

import json
import os
import shutil

import numpy as np
import pytest

pytest.importorskip('tensorflow')

from densenet_flax import config_keys  # noqa: E402
from densenet_flax import training  # noqa: E402
from densenet_flax.data import order  # noqa: E402
from densenet_flax.data import pipeline  # noqa: E402
from densenet_flax.data import sources  # noqa: E402
from densenet_flax.inference import Classifier  # noqa: E402

import fakedata  # noqa: E402
import multiprocess  # noqa: E402
import trainutil  # noqa: E402

# The recipes shrunk: a 4-block DenseNet of 1 layer each at 32 px, no
# pretrained weights, float32, 2 epochs of batches of 16.
TINY = {
  'init_from': '',
  'model_overrides.block_sizes': (1, 1, 1, 1),
  'model_overrides.growth_rate': 4,
  'model_overrides.num_init_features': 8,
  'half_precision': False,
  'image_size': 32,
  'augment.resize': 32,
  'augment.crop_padding': 4,
  'batch_size': 16,
  'eval_batch_size': 16,
  'num_epochs': 2,
  'log_every_steps': 2,
  'checkpoint_every_steps': 5,
  'progress_bar': False,
  'compilation_cache_dir': '',
}


def recipe(name, manual_dir, data_dir, **overrides):
  """configs/<name> with TINY and `overrides` (dotted keys) applied."""
  config = config_keys.load_config_file(
    os.path.join(trainutil.REPO, 'configs', name)
  )
  config.manual_dir, config.data_dir = str(manual_dir), str(data_dir)
  for key, value in {**TINY, **overrides}.items():
    target = config
    *parents, leaf = key.split('.')
    for parent in parents:
      target = target[parent]
    target[leaf] = value
  return config


@pytest.fixture(scope='module')
def rafdb_dir(tmp_path_factory):
  """A RAF-DB basic release: 10 train and 2 test images per class."""
  root = tmp_path_factory.mktemp('rafdb')
  fakedata.write_rafdb(root / 'manual', per_split=(('train', 10), ('test', 2)))
  return root / 'manual', root / 'data'


def test_rafdb_recipe_trains_from_the_command_line(rafdb_dir, tmp_path):
  """`train.py --config configs/rafdb.py --config.manual_dir DIR`: checkpoints
  picked on the carved validation split, the test split evaluated once with
  accuracy and balanced accuracy."""
  manual, data = rafdb_dir
  workdir = tmp_path / 'run'
  # configs/rafdb.py with TINY's overrides (model fields cannot be added
  # from the command line); the data's place on the command line.
  config_file = tmp_path / 'tiny_rafdb.py'
  config_file.write_text(
    'import sys\n'
    f'sys.path.insert(0, {os.path.dirname(__file__)!r})\n'
    'import test_face_training\n\n'
    'def get_config():\n'
    "  return test_face_training.recipe('rafdb.py', '', '')\n"
  )
  out = multiprocess.run(
    multiprocess.train_command(
      workdir,
      config_file,
      f'--config.manual_dir={manual}',
      f'--config.data_dir={data}',
    ),
    timeout=600,
  )
  assert out.returncode == 0, out.stderr[-3000:]
  assert 'carved out as' in out.stderr
  reports = sorted((workdir / 'eval').glob('test-*.json'))
  assert len(reports) == 1
  report = json.loads(reports[0].read_text())
  assert report['num_examples'] == 14  # the whole test split, once
  assert 0 <= report['balanced_accuracy'] <= 1
  assert report['selection'] == {
    'checkpoint': 'best',
    'selected_on': 'validation',
    'select_metric': 'accuracy',
    'test_used_for_selection': False,
  }
  config = json.loads((workdir / 'config.json').read_text())
  assert config['dataset'] == 'rafdb' and config['augment']['erasing'] == 0.5


@pytest.mark.parametrize(
  'release,dataset',
  [
    pytest.param('original', 'affectnet8', marks=pytest.mark.slow),
    ('npy', 'affectnet7'),
  ],
)
def test_affectnet_recipe_trains_on_either_release(release, dataset, tmp_path):
  """configs/affectnet.py, class-balanced draws, on both AffectNet releases
  and both class counts; the skipped rows (codes 8-10, contempt for 7
  classes, a negative face width) are in the run's test report."""
  write = {
    'original': fakedata.write_affectnet_original,
    'npy': fakedata.write_affectnet_npy,
  }[release]
  records = write(tmp_path / 'manual', per_code=(('train', 5), ('test', 1)))
  config = recipe(
    'affectnet.py',
    tmp_path / 'manual',
    tmp_path / 'data',
    dataset=dataset,
    validation_fraction=0.2,
  )
  summary = training.train_and_evaluate(config, str(tmp_path / 'run'))
  classes = int(dataset[-1])
  kept = [
    r
    for r in records
    if r['split'] == 'test'
    and not fakedata.skip_reason(r['code'], r['negative_width'], classes)
  ]
  test = summary['test']
  assert test['num_examples'] == len(kept) > 0
  assert len(test['class_names']) == classes
  assert test['selection']['selected_on'] == 'validation'
  skipped = test['skipped_images']['counts']
  want = {}
  for r in records:
    reason = fakedata.skip_reason(r['code'], r['negative_width'], classes)
    if reason:
      want.setdefault(r['split'], {}).setdefault(reason, 0)
      want[r['split']][reason] += 1
  for split, reasons in want.items():
    for reason, count in reasons.items():
      assert skipped[split][reason] == count, (split, reason)


def test_class_folders_train_and_record_their_classes(tmp_path):
  """configs/image_folder.py on root/<split>/<class>/: the classes, in
  numeric order, go to config.json; the root's own 'val' folder can select
  checkpoints instead of a carve."""
  fakedata.write_image_folder(
    tmp_path / 'root', per_split=(('train', 8), ('test', 2), ('val', 2))
  )
  config = recipe(
    'image_folder.py', tmp_path / 'root', tmp_path / 'data', eval_split='val'
  )
  summary = training.train_and_evaluate(config, str(tmp_path / 'run'))
  recorded = json.loads((tmp_path / 'run' / 'config.json').read_text())
  assert recorded['class_names'] == ['2', '10', 'happy']
  assert summary['test']['class_names'] == ['2', '10', 'happy']
  assert summary['test']['num_examples'] == 6
  assert summary['test']['selection']['selected_on'] == 'val'
  shutil.rmtree(tmp_path / 'root')  # the run restores without its root
  classifier = Classifier.from_workdir(str(tmp_path / 'run'))
  assert classifier.class_names == ('2', '10', 'happy')


def test_a_flat_folder_is_refused_before_anything_is_written(tmp_path):
  root = tmp_path / 'flat'
  fakedata.write_image(str(root / 'a.jpg'), (10, 20, 30))
  config = recipe('image_folder.py', root, tmp_path / 'data')
  with pytest.raises(sources.DataFormatError) as info:
    training.train_and_evaluate(config, str(tmp_path / 'run'))
  assert str(root) in str(info.value) and '<class>/' in str(info.value)
  assert not (tmp_path / 'run').exists()


def test_validation_is_carved_from_train_and_disjoint_by_file(
  rafdb_dir, tmp_path
):
  manual, data = rafdb_dir
  data = pipeline.InputPipeline(recipe('rafdb.py', manual, data), num_devices=1)
  train = data._examples('train', train=True)
  validation = data._examples('validation')
  whole = data._stored_examples('train')
  assert set(train.keys).isdisjoint(validation.keys)
  assert sorted([*train.keys, *validation.keys]) == sorted(whole.keys)
  # 10% of each class's 10: one per class.
  np.testing.assert_array_equal(np.bincount(validation.labels), [1] * 7)
  assert data.split_size('validation') == 7
  assert data.split_size('train', train=True) == 63
  # Evaluation reads exactly the carved files' labels.
  labels = np.concatenate(
    [b['label'][b['mask']] for b in data.eval_batches('validation')]
  )
  np.testing.assert_array_equal(np.sort(labels), np.sort(validation.labels))


def test_the_carve_depends_on_the_files_not_their_stored_order():
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 5, 400)
  keys = np.array([f'img_{i:04d}.jpg' for i in range(400)])
  train, validation = order.carve_validation(labels, keys, 0.1, seed=3)
  shuffled = rng.permutation(400)
  train_b, validation_b = order.carve_validation(
    labels[shuffled], keys[shuffled], 0.1, seed=3
  )
  assert set(keys[validation]) == set(keys[shuffled][validation_b])
  assert set(keys[train]).isdisjoint(keys[validation])
  assert len(train) + len(validation) == 400
  for label in range(5):  # stratified: round(10%) of each class
    count = np.sum(labels == label)
    assert np.sum(labels[validation] == label) == round(0.1 * count)
  other = order.carve_validation(labels, keys, 0.1, seed=4)[1]
  assert set(other) != set(validation)  # another seed, another carve


def test_balanced_draws_follow_their_weights():
  """Classes of 1000, 100 and 10 examples are each drawn a third of the
  time; the draws are the seed's, epoch by epoch."""
  labels = np.repeat([0, 1, 2], [1000, 100, 10])
  draws = order.epoch_order(
    labels, 3, 30_000, seed=0, epoch=0, class_sampling='balanced'
  )
  counts = np.bincount(labels[draws], minlength=3)
  # Binomial(30000, 1/3): a standard deviation of 82; 5 of them.
  np.testing.assert_allclose(counts, 10_000, atol=5 * 82)
  # Within a class, every example alike: the 10 rare ones ~1000 times each.
  rare = np.bincount(draws[labels[draws] == 2] - 1100, minlength=10)
  np.testing.assert_allclose(rare, 1000, atol=5 * 31)
  again = order.epoch_order(labels, 3, 30_000, 0, 0, 'balanced')
  np.testing.assert_array_equal(draws, again)
  assert not np.array_equal(
    draws, order.epoch_order(labels, 3, 30_000, 0, 1, 'balanced')
  )
  plain = order.epoch_order(labels, 3, 1110, 0, 0, 'none')
  np.testing.assert_array_equal(np.sort(plain), np.arange(1110))


def test_balanced_batches_are_the_same_on_one_process_or_two(
  rafdb_dir, tmp_path
):
  """The global batches two processes draw together are the one process's,
  row for row (each process reads its rows by index)."""
  manual, data_dir = rafdb_dir
  config = recipe('rafdb.py', manual, data_dir, class_sampling='balanced')

  def batches(count, index):
    data = pipeline.InputPipeline(
      config, num_devices=1, process_index=index, process_count=count
    )
    it = data.train_batches(start_step=2)  # crosses into the second epoch
    return [next(it) for _ in range(3)]

  one = batches(1, 0)
  two = [batches(2, i) for i in range(2)]
  for step in range(3):
    for key in ('image', 'label'):
      joined = np.concatenate(
        [two[0][step][key][0], two[1][step][key][0]], axis=0
      )
      np.testing.assert_array_equal(joined, one[step][key][0], err_msg=key)


def test_a_balanced_run_resumed_after_sigterm_is_bit_identical(
  rafdb_dir, tmp_path, monkeypatch
):
  manual, data_dir = rafdb_dir

  def config():
    return recipe(
      'rafdb.py', manual, data_dir, class_sampling='balanced', test_split=''
    )

  training.train_and_evaluate(config(), str(tmp_path / 'whole'))
  with trainutil.sigterm_at_batch(monkeypatch, 4):
    first = training.train_and_evaluate(config(), str(tmp_path / 'resumed'))
  assert first['interrupted'] == 'SIGTERM' and 0 < first['step'] < 6
  second = training.train_and_evaluate(config(), str(tmp_path / 'resumed'))
  assert second['step'] == 6 and second['interrupted'] is None
  trainutil.assert_same_checkpoints(
    [str(tmp_path / 'whole'), str(tmp_path / 'resumed')],
    6,
    ('params', 'batch_stats', 'opt_state'),
  )


@pytest.mark.slow
def test_select_on_test_says_so_in_every_report(rafdb_dir, tmp_path):
  """The papers' protocol, when asked for: the test split picks 'best' and
  is reported on it; the report and evaluate.py say the figure is
  optimistic."""
  manual, data = rafdb_dir
  workdir = str(tmp_path / 'run')
  summary = training.train_and_evaluate(
    recipe('rafdb.py', manual, data, select_on='test', num_epochs=1),
    workdir,
  )
  assert summary['test']['selection']['test_used_for_selection']
  assert summary['test']['selection']['selected_on'] == 'test'
  out = multiprocess.run(
    multiprocess.evaluate_command(
      workdir, '--checkpoint', 'best', '--split', 'test'
    ),
    timeout=600,
  )
  assert out.returncode == 0, out.stderr[-3000:]
  assert 'selected on test itself' in out.stdout
  assert 'balanced' in out.stdout


def test_an_unreadable_image_is_refused_or_skipped_and_reported(tmp_path):
  """A label file listing an image that is missing: the build is refused
  naming it, or, with skip_unreadable_images, skipped and reported."""
  records = fakedata.write_rafdb(
    tmp_path / 'manual', per_split=(('train', 3), ('test', 1))
  )
  missing = [r for r in records if r['split'] == 'train'][4]['file']
  os.remove(tmp_path / 'manual' / missing)
  config = recipe('rafdb.py', tmp_path / 'manual', tmp_path / 'refused')
  with pytest.raises(sources.DataFormatError, match=os.path.basename(missing)):
    pipeline.InputPipeline(config, num_devices=1)
  config = recipe(
    'rafdb.py',
    tmp_path / 'manual',
    tmp_path / 'skipped',
    skip_unreadable_images=True,
  )
  with pytest.raises(ValueError, match='config.validation_fraction=0.1'):
    pipeline.InputPipeline(config, num_devices=1).split_size('validation')
  config.validation_fraction = 0.4  # one of each class's 2-3
  data = pipeline.InputPipeline(config, num_devices=1)
  skipped = data.skipped_images()
  assert sum(skipped['counts']['train'].values()) == 1
  assert [
    os.path.basename(f) for fs in skipped['first_files'].values() for f in fs
  ] == [os.path.basename(missing)]
  assert data.split_size('validation') == 7
  assert data.split_size('train', train=True) == 13
