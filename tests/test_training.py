"""The training loop end to end on tiny models: resume, SIGTERM, evaluate."""

import functools
import json
import os
import re
import shutil
import signal
import subprocess
import time

import jax
import numpy as np
import pytest

pytest.importorskip('tensorflow')

from densenet_flax import checkpointing  # noqa: E402
from densenet_flax import config_checks  # noqa: E402
from densenet_flax import evaluation  # noqa: E402
from densenet_flax import reporting  # noqa: E402
from densenet_flax import training  # noqa: E402
from densenet_flax import run_directory  # noqa: E402
from densenet_flax import resume_policy  # noqa: E402
from densenet_flax import recipe  # noqa: E402

import multiprocess  # noqa: E402
import trainutil  # noqa: E402


@pytest.fixture(scope='module')
def uninterrupted(digits_dir, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('uninterrupted'))
  summary = training.train_and_evaluate(
    trainutil.tiny_config(digits_dir), workdir
  )
  return workdir, summary


def test_a_run_produces_checkpoints_logs_and_reports(uninterrupted):
  workdir, summary = uninterrupted
  assert summary['step'] == summary['total_steps'] == 16
  assert summary['interrupted'] is None
  assert 0 < summary['eval']['accuracy'] <= 1
  for path in (
    'config.json',
    'metrics.jsonl',
    'reports/training_curves.png',
    'eval/test-16.json',
    'eval/test-16.png',
  ):
    assert os.path.exists(os.path.join(workdir, path)), path
  assert os.listdir(os.path.join(workdir, 'tensorboard'))
  history = reporting.read_history(os.path.join(workdir, 'metrics.jsonl'))
  steps = [r['step'] for r in history if 'train/loss' in r]
  assert steps == [4, 5, 8, 10, 12, 15, 16]  # log, checkpoint and epoch points
  assert {
    'train/learning_rate',
    'train/images_per_second',
    'train/first_step_seconds',
  } <= set(history[0])
  assert history[0]['train/first_step_seconds'] > 0
  assert not any('train/first_step_seconds' in r for r in history[1:])
  evals = [r for r in history if 'eval/accuracy' in r]
  assert [r['step'] for r in evals] == [8, 16]
  assert summary['test']['num_examples'] == 359


def test_images_per_second_leaves_out_the_compiling_first_step():
  buffer = training._MetricBuffer()
  metrics = {
    'loss': np.float32(1.0),
    'accuracy': np.float32(0.5),
    'finite': np.float32(1.0),
  }
  buffer.add(0, metrics)
  buffer.restart_clock(12.5)  # as the loop does after the run's first step
  buffer.add(1, metrics)
  buffer.add(2, metrics)
  stacked = buffer.flush(lambda m: m)
  assert len(stacked['loss']) == 3 and stacked['timed_steps'] == 2
  assert stacked['untimed_seconds'] == 12.5
  buffer.add(3, metrics)
  stacked = buffer.flush(lambda m: m)
  assert stacked['timed_steps'] == 1 and 'untimed_seconds' not in stacked


def test_a_progress_bar_shows_a_write_of_the_untimed_first_step_alone(
  digits_dir, tmp_path
):
  summary = training.train_and_evaluate(
    trainutil.tiny_config(
      digits_dir, progress_bar=True, log_every_steps=1, stop_after_steps=2
    ),
    str(tmp_path / 'run'),
  )
  assert summary['interrupted'] == 'stop_after_steps'
  rows = [json.loads(line) for line in open(tmp_path / 'run' / 'metrics.jsonl')]
  train = [row for row in rows if 'train/loss' in row]
  assert [row['step'] for row in train] == [1, 2]
  assert 'train/images_per_second' not in train[0]
  assert 'train/images_per_second' in train[1]


def test_resumed_run_ends_with_identical_parameters(
  uninterrupted, digits_dir, tmp_path
):
  workdir = str(tmp_path)
  first = training.train_and_evaluate(
    trainutil.tiny_config(digits_dir, stop_after_steps=6), workdir
  )
  assert first['interrupted'] == 'stop_after_steps' and first['step'] == 6
  ckpts = checkpointing.Checkpoints(os.path.join(workdir, 'checkpoints'))
  assert ckpts.latest_step() == 6  # mid-epoch (8 steps per epoch)
  ckpts.close()
  second = training.train_and_evaluate(
    trainutil.tiny_config(digits_dir), workdir
  )
  assert second['step'] == 16 and second['interrupted'] is None
  step_a, a = trainutil.final_variables(uninterrupted[0])
  step_b, b = trainutil.final_variables(workdir)
  assert step_a == step_b == 16
  leaves_a = jax.tree_util.tree_leaves(a)
  leaves_b = jax.tree_util.tree_leaves(b)
  assert len(leaves_a) == len(leaves_b) > 0
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(x, y)  # bitwise, on CPU
  assert second['eval'] == uninterrupted[1]['eval']
  history = reporting.read_history(os.path.join(workdir, 'metrics.jsonl'))
  steps = [r['step'] for r in history if 'train/loss' in r]
  assert steps == sorted(set(steps))  # the resumed run did not log twice


def test_evaluate_reproduces_the_logged_metric(uninterrupted):
  workdir, summary = uninterrupted
  history = reporting.read_history(os.path.join(workdir, 'metrics.jsonl'))
  logged = [r for r in history if 'eval/accuracy' in r][-1]
  report = evaluation.evaluate(workdir, 'latest', split='test')
  assert report['step'] == logged['step'] == 16
  assert report['accuracy'] == pytest.approx(logged['eval/accuracy'], abs=1e-9)
  assert report['macro_f1'] == pytest.approx(logged['eval/macro_f1'], abs=1e-9)
  with open(os.path.join(workdir, 'eval', 'test-16.json')) as f:
    saved = json.load(f)
  for key in (
    'accuracy',
    'macro_f1',
    'per_class',
    'confusion_matrix',
    'step',
    'split',
    'loss',
  ):
    assert key in saved
  assert np.sum(saved['confusion_matrix']) == 359
  assert set(saved['per_class']['3']) == {
    'precision',
    'recall',
    'f1',
    'support',
  }
  assert sum(c['support'] for c in saved['per_class'].values()) == 359


def test_evaluate_names_the_splits_before_reading_a_checkpoint(
  uninterrupted, monkeypatch
):
  def restore_run(*args, **kwargs):
    raise AssertionError('a checkpoint was read before the split was checked')

  monkeypatch.setattr(run_directory, 'restore_run', restore_run)
  with pytest.raises(ValueError, match="--split 'nope': the run's splits"):
    evaluation.evaluate(uninterrupted[0], 'latest', split='nope')


def test_evaluate_command_line(uninterrupted):
  workdir, _ = uninterrupted
  out = subprocess.run(
    multiprocess.evaluate_command(
      workdir, '--checkpoint', 'best', '--split', 'test'
    ),
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert out.returncode == 0, out.stderr[-2000:]
  assert 'macro-F1' in out.stdout and 'wrote' in out.stdout
  best = checkpointing.Checkpoints(os.path.join(workdir, 'checkpoints'))
  assert f'test-{best.best_step()}.json' in out.stdout
  best.close()


def test_checkpoint_of_another_model_names_the_parameter(uninterrupted):
  from densenet_flax import optim
  from densenet_flax import steps

  workdir, _ = uninterrupted
  config = run_directory.load_config(workdir)
  ckpts = checkpointing.Checkpoints(os.path.join(workdir, 'checkpoints'))

  def abstract_state(num_classes, **overrides):
    config.model_overrides.update(overrides)
    model = recipe.build_model(config).clone(num_classes=num_classes)
    tx, _ = optim.create_optimizer(config, 8)
    return jax.eval_shape(
      lambda: steps.create_train_state(jax.random.key(0), model, tx, (8, 8, 1))
    )

  with pytest.raises(
    checkpointing.CheckpointMismatchError,
    match=r'params/classifier/bias has shape \(10,\), the '
    r'model expects \(7,\)',
  ):
    ckpts.restore(16, abstract_state(7), {'num_classes': 7})
  with pytest.raises(
    checkpointing.CheckpointMismatchError,
    match=r'batch_stats/denseblock1/denselayer1/norm2/mean has '
    r'shape \(16,\), the model expects \(24,\)',
  ):
    ckpts.restore(16, abstract_state(10, growth_rate=6))
  with pytest.raises(
    checkpointing.CheckpointMismatchError,
    match=r'has no batch_stats/denseblock1/denselayer2/norm1/'
    r'mean, which the model needs',
  ):
    ckpts.restore(16, abstract_state(10, growth_rate=4, block_sizes=(2, 1, 1)))
  ckpts.close()


@pytest.mark.slow  # second tier: keeps the default under 10 min
def test_sigterm_mid_epoch_then_resume_ends_bit_identical(digits_dir, tmp_path):
  # The whole training split at 16 px: 44 steps, so the signal lands mid-epoch.
  overrides = dict(
    train_split='train',
    num_epochs=1,
    image_size=16,
    **{'augment.resize': 16},
    log_every_steps=1,
    checkpoint_every_steps=1000,
  )
  reference = str(tmp_path / 'uninterrupted')
  training.train_and_evaluate(
    trainutil.tiny_config(digits_dir, **overrides), reference
  )
  config_file = trainutil.write_config_file(
    tmp_path / 'config.py', digits_dir, **overrides
  )
  workdir = tmp_path / 'run'
  proc = subprocess.Popen(
    multiprocess.train_command(workdir, config_file),
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
  )
  history = workdir / 'metrics.jsonl'
  deadline = time.monotonic() + 240
  while not (history.exists() and history.read_text().strip()):
    assert proc.poll() is None, proc.stdout.read()[-3000:]
    assert time.monotonic() < deadline
    time.sleep(0.02)
  proc.send_signal(signal.SIGTERM)
  output, _ = proc.communicate(timeout=120)
  assert proc.returncode == 0, output[-3000:]
  assert 'SIGTERM at step' in output
  ckpts = checkpointing.Checkpoints(str(workdir / 'checkpoints'))
  step = ckpts.latest_step()
  assert ckpts.all_steps() == [step] and 0 < step < 44  # mid-epoch
  ckpts.close()
  report = evaluation.evaluate(str(workdir), 'latest', split='test')
  assert report['step'] == step and report['num_examples'] == 359

  summary = training.train_and_evaluate(
    trainutil.tiny_config(digits_dir, **overrides), str(workdir)
  )
  assert summary['step'] == 44 and summary['interrupted'] is None
  _, want = trainutil.final_variables(reference)
  _, got = trainutil.final_variables(str(workdir))
  leaves_want = jax.tree_util.tree_leaves(want)
  leaves_got = jax.tree_util.tree_leaves(got)
  assert len(leaves_want) == len(leaves_got) > 0
  for x, y in zip(leaves_want, leaves_got):  # params, BN statistics, momenta
    np.testing.assert_array_equal(x, y)


def _damage(step_dir):
  """Truncates every stored array chunk of a checkpoint to half its bytes."""
  damaged = 0
  for root, _, files in os.walk(os.path.join(step_dir, 'state')):
    if os.path.basename(root) == 'd':
      for name in files:
        path = os.path.join(root, name)
        with open(path, 'r+b') as f:
          f.truncate(os.path.getsize(path) // 2)
        damaged += 1
  assert damaged


def test_a_damaged_latest_checkpoint_is_skipped_and_set_aside(
  uninterrupted, digits_dir, tmp_path, caplog
):
  workdir = str(tmp_path / 'run')
  shutil.copytree(uninterrupted[0], workdir)
  checkpoints = os.path.join(workdir, 'checkpoints')
  assert {'15', '16'} <= set(os.listdir(checkpoints))
  _damage(os.path.join(checkpoints, '16'))
  cut_short = os.path.join(checkpoints, '17.orbax-checkpoint-tmp-1')
  os.makedirs(os.path.join(cut_short, 'state'))  # a save a crash cut short

  # A reader falls back and touches nothing.
  with caplog.at_level('WARNING', logger='densenet_flax'):
    report = evaluation.evaluate(workdir, 'latest', split='test')
  assert report['step'] == 15
  assert 'Checkpoint 16' in caplog.text and 'cannot be restored' in caplog.text
  assert os.path.isdir(os.path.join(checkpoints, '16'))
  assert os.path.isdir(cut_short)

  # Training sets the damaged one aside, resumes at 15 and ends as if nothing
  # had happened.
  caplog.clear()
  with caplog.at_level('WARNING', logger='densenet_flax'):
    summary = training.train_and_evaluate(
      trainutil.tiny_config(digits_dir), workdir
    )
  assert 'Checkpoint 16' in caplog.text
  assert summary['step'] == 16
  assert os.path.isdir(os.path.join(workdir, 'checkpoints_set_aside', '16'))
  assert not os.path.exists(cut_short)
  _, want = trainutil.final_variables(uninterrupted[0])
  _, got = trainutil.final_variables(workdir)
  for x, y in zip(
    jax.tree_util.tree_leaves(want), jax.tree_util.tree_leaves(got)
  ):
    np.testing.assert_array_equal(x, y)


def test_resuming_with_a_result_changing_config_is_refused(
  uninterrupted, digits_dir, tmp_path
):
  workdir = str(tmp_path / 'run')
  shutil.copytree(uninterrupted[0], workdir)
  with open(os.path.join(workdir, 'config.json')) as f:
    saved_config = f.read()
  with pytest.raises(resume_policy.ConfigChangeError) as info:
    training.train_and_evaluate(
      trainutil.tiny_config(
        digits_dir,
        num_epochs=4,
        batch_size=16,
        log_every_steps=2,
        rng_impl='rbg',
      ),
      workdir,
    )
  message = str(info.value)
  assert 'batch_size: 32 -> 16' in message and 'num_epochs: 2 -> 4' in message
  assert "rng_impl: 'threefry2x32' -> 'rbg'" in message
  assert 'log_every_steps' not in message  # bookkeeping may change
  assert 'allow_config_change' in message
  with open(os.path.join(workdir, 'config.json')) as f:
    assert f.read() == saved_config  # nothing rewritten

  summary = training.train_and_evaluate(
    trainutil.tiny_config(digits_dir, num_epochs=3, allow_config_change=True),
    workdir,
  )
  assert summary['step'] == 24  # on from 16, 8 steps per epoch
  history = reporting.read_history(os.path.join(workdir, 'metrics.jsonl'))
  changes = [r for r in history if 'config_change' in r]
  assert changes == [{'step': 16, 'config_change': {'num_epochs': [2, 3]}}]


@pytest.mark.parametrize('loss_scaling', ['none', 'dynamic'])
@pytest.mark.parametrize(
  'learning_rate,what',
  [
    (1e30, 'Loss is nan'),
    # The loss stays finite for steps after the running BN statistics
    # overflow (training mode normalises with batch statistics).
    (1e6, 'Parameters or BN statistics are not finite'),
  ],
)
def test_divergence_stops_naming_the_step_and_saves_nothing_bad(
  digits_dir, tmp_path, learning_rate, what, loss_scaling
):
  """With a dynamic loss scale too: it skips the steps whose gradients are
  not finite, but a loss or state that is not finite still stops the run."""
  config = trainutil.tiny_config(
    digits_dir,
    learning_rate=learning_rate,
    checkpoint_every_steps=1,
    log_every_steps=8,
    loss_scaling=loss_scaling,
  )
  with pytest.raises(FloatingPointError, match=r'at step (\d+)') as info:
    training.train_and_evaluate(config, str(tmp_path))
  assert str(info.value).startswith(what), str(info.value)
  bad_step = int(re.search(r'at step (\d+)', str(info.value)).group(1))
  ckpts = checkpointing.Checkpoints(str(tmp_path / 'checkpoints'), keep=100)
  steps = ckpts.all_steps()
  assert bad_step > 1 and steps and max(steps) < bad_step
  for step in steps:  # every checkpoint on disk, not only the latest
    for leaf in jax.tree_util.tree_leaves(jax.device_get(ckpts.read(step))):
      assert np.all(np.isfinite(leaf)), step
  ckpts.close()


@pytest.mark.parametrize(
  'key,value,message',
  [
    ('model', 'densenet122', "config.model='densenet122': expected a preset"),
    ('dataset', 'mnist', "config.dataset='mnist': expected one of"),
    ('learning_rate', -0.1, 'config.learning_rate=-0.1: expected a positive'),
    ('batch_size', 30, 'config.batch_size=30: expected a multiple of the 8'),
    ('optimizer', 'lamb', "config.optimizer='lamb'"),
    ('augment.crop', 'center', "config.augment.crop='center'"),
    ('eval_split', 'val', "config.eval_split='val'"),
    ('select_on', 'validation', "config.eval_split='test': expected a split"),
    ('select_on', 'public', "config.select_on='public': expected one of"),
    ('validation_fraction', 1.0, 'config.validation_fraction=1.0: expected'),
    ('class_sampling', 'oversample', "config.class_sampling='oversample'"),
    ('class_names', ('a', 'b'), "config.class_names=('a', 'b'): expected ()"),
    ('augment.erasing', 1.5, 'config.augment.erasing=1.5: expected a prob'),
    ('image_size', 3, 'config.image_size=3: expected at least 4'),
    ('select_metric', 'loss', "config.select_metric='loss'"),
    ('rng_impl', 'philox', "config.rng_impl='philox': expected one of"),
    (
      'warmup_epochs',
      99.0,
      'config.warmup_epochs=99.0: expected fewer than num_epochs',
    ),
  ],
)
def test_bad_config_names_the_key(digits_dir, key, value, message):
  config = trainutil.tiny_config(digits_dir, eval_batch_size=64, **{key: value})
  with pytest.raises(ValueError) as info:
    config_checks.validate(config, num_devices=8)
  assert message in str(info.value)


def test_bad_config_fails_before_anything_is_built(digits_dir, tmp_path):
  config = trainutil.tiny_config(digits_dir, learning_rate=-1.0)
  start = time.monotonic()
  with pytest.raises(ValueError, match='config.learning_rate'):
    training.train_and_evaluate(config, str(tmp_path))
  assert time.monotonic() - start < 5
  assert not os.listdir(tmp_path)  # no workdir files, nothing compiled


@pytest.mark.parametrize(
  'overrides,message',
  [
    (
      {'process_id': 1},
      'config.process_id=1: expected -1 unless config.distributed=True',
    ),
    (
      {'coordinator_address': '10.0.0.1:1234'},
      "config.coordinator_address='10.0.0.1:1234': expected '' unless",
    ),
    (
      {'distributed': True, 'num_processes': 2, 'process_id': 2},
      'config.process_id=2: expected an id in [0, num_processes)',
    ),
    (
      {'distributed': True, 'distributed_timeout_s': 0},
      'config.distributed_timeout_s=0: expected a positive number',
    ),
  ],
)
def test_bad_distributed_config_names_the_key(digits_dir, overrides, message):
  config = trainutil.tiny_config(digits_dir, **overrides)
  with pytest.raises(ValueError) as info:
    config_checks.validate(config)  # before jax.distributed.initialize
  assert message in str(info.value)


def test_a_second_stop_signal_interrupts_at_once():
  stop = training._StopRequest()
  stop(signal.SIGTERM, None)
  assert stop.signal == 'SIGTERM'  # the loop saves and returns
  with pytest.raises(KeyboardInterrupt, match='second signal'):
    stop(signal.SIGINT, None)


@pytest.mark.slow  # second tier: four short runs
def test_memory_efficient_training_matches_plain_and_resumes_exactly(
  digits_dir, tmp_path
):
  """The shared-buffer block through the whole loop: the same run as the
  plain mode without dropout; with dropout (masks from the step's key), a run
  stopped mid-epoch and resumed ends bit-identical to an uninterrupted one."""

  def run(name, **overrides):
    config = trainutil.tiny_config(
      digits_dir, **{'model_overrides.block_sizes': (3, 3, 3), **overrides}
    )
    summary = training.train_and_evaluate(config, str(tmp_path / name))
    return summary, trainutil.final_variables(str(tmp_path / name))[1]

  # The two modes round differently, and at lr 0.1 training grows those
  # last bits: on one machine they agreed to 1e-5 after 4 steps, 1.2e-4
  # after 8 and 4e-3 after 16. Compared after 4.
  _, plain = run('plain', stop_after_steps=4)
  _, efficient = run('efficient', memory_efficient=True, stop_after_steps=4)
  for a, b in zip(
    jax.tree_util.tree_leaves(plain), jax.tree_util.tree_leaves(efficient)
  ):
    np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4)

  whole_vars = _resumed_run_ends_identical(
    run, memory_efficient=True, **{'model_overrides.drop_rate': 0.2}
  )
  assert not all(
    np.allclose(a, b)
    for a, b in zip(
      jax.tree_util.tree_leaves(whole_vars),
      jax.tree_util.tree_leaves(efficient),
    )
  )  # dropout was on


def _resumed_run_ends_identical(run, **overrides):
  """Asserts that `run(name, **overrides)` stopped at step 6 and resumed ends
  bit-identical to the whole run (16 steps); returns the whole run's
  variables. `run` returns (summary, final variables) of workdir `name`."""
  whole, whole_vars = run('whole', **overrides)
  first, _ = run('resumed', stop_after_steps=6, **overrides)
  assert first['step'] == 6
  resumed, resumed_vars = run('resumed', **overrides)
  assert resumed['step'] == whole['step'] == 16
  for a, b in zip(
    jax.tree_util.tree_leaves(whole_vars),
    jax.tree_util.tree_leaves(resumed_vars),
  ):
    np.testing.assert_array_equal(a, b)
  return whole_vars


@pytest.mark.slow  # second tier: four short runs
def test_rbg_keys_train_other_streams_and_resume_exactly(digits_dir, tmp_path):
  """rng_impl='rbg': the run (init, dropout masks) differs from the threefry
  run of the same seed, and stopped mid-epoch and resumed it ends
  bit-identical to an uninterrupted one."""

  def run(name, **overrides):
    config = trainutil.tiny_config(
      digits_dir,
      **{
        'model_overrides.drop_rate': 0.2,
        'eval_every_epochs': 2,
        'test_split': '',
        **overrides,
      },
    )
    summary = training.train_and_evaluate(config, str(tmp_path / name))
    return summary, trainutil.final_variables(str(tmp_path / name))[1]

  _, threefry = run('threefry')
  whole_vars = _resumed_run_ends_identical(run, rng_impl='rbg')
  assert not all(
    np.allclose(a, b)
    for a, b in zip(
      jax.tree_util.tree_leaves(whole_vars), jax.tree_util.tree_leaves(threefry)
    )
  )


FLOAT16_DYNAMIC = dict(
  half_precision=True, half_precision_dtype='float16', loss_scaling='dynamic'
)


def test_dynamic_loss_scaling_skips_overflowing_steps_and_trains_on(
  digits_dir, tmp_path, monkeypatch
):
  """float16 with a dynamic loss scale on CPU: a scale far too large
  overflows the first steps' gradients; each of them is skipped and halves
  the scale, the run goes on and the scale is logged and checkpointed."""
  from densenet_flax import steps

  monkeypatch.setattr(
    steps,
    'new_dynamic_scale',
    functools.partial(steps.new_dynamic_scale, scale=2.0**24),
  )
  summary = training.train_and_evaluate(
    trainutil.tiny_config(
      digits_dir, log_every_steps=1, test_split='', **FLOAT16_DYNAMIC
    ),
    str(tmp_path),
  )
  assert summary['step'] == 16 and summary['interrupted'] is None
  history = reporting.read_history(str(tmp_path / 'metrics.jsonl'))
  rows = [r for r in history if 'train/loss' in r]
  assert [r['step'] for r in rows] == list(range(1, 17))
  skipped = [r['step'] for r in rows if r['train/skipped_steps']]
  scales = [r['train/loss_scale'] for r in rows]
  assert skipped[0] == 1 and len(skipped) >= 3, skipped
  for step in skipped:  # each skip halves the scale of the next step
    if step < 16:
      assert scales[step] == scales[step - 1] / 2
  assert all(np.isfinite(r['train/loss']) for r in rows)
  ckpts = checkpointing.Checkpoints(str(tmp_path / 'checkpoints'))
  stored = jax.device_get(ckpts.read(16))['dynamic_scale']
  ckpts.close()
  # The scale after step 16: halved if that step was skipped.
  assert float(stored['scale']) == scales[-1] / (2 if 16 in skipped else 1)


def test_float16_dynamic_run_stopped_by_sigterm_resumes_bit_identical(
  digits_dir, tmp_path, monkeypatch
):
  """SIGTERM to the process mid-epoch (sent as the loop draws a batch), then
  the same command: params, BN statistics, optimizer state and the loss
  scale end as in an uninterrupted run."""

  config = lambda: trainutil.tiny_config(  # noqa: E731
    digits_dir, test_split='', **FLOAT16_DYNAMIC
  )
  training.train_and_evaluate(config(), str(tmp_path / 'whole'))
  with trainutil.sigterm_at_batch(monkeypatch, 5):
    first = training.train_and_evaluate(config(), str(tmp_path / 'resumed'))
  assert first['interrupted'] == 'SIGTERM' and 0 < first['step'] < 8
  second = training.train_and_evaluate(config(), str(tmp_path / 'resumed'))
  assert second['step'] == 16 and second['interrupted'] is None
  trainutil.assert_same_checkpoints(
    [str(tmp_path / 'whole'), str(tmp_path / 'resumed')],
    16,
    ('params', 'batch_stats', 'opt_state', 'dynamic_scale'),
  )
