"""Many processes for real: 2 OS processes on 127.0.0.1 (jax.distributed, gloo).

Each process has one CPU device and runs the real command line (train.py,
evaluate.py) with --config.distributed=True and an explicit coordinator, as
a user would on one machine. Checked: the 2-process run computes what one
process with 2 devices does, its checkpoints restore in one process,
evaluation counts every example once, shard_map and pmap compute the same
bits, SIGTERM to one process stops both at the same step and the rerun (under
the other parallelism) ends bit-identical, and a killed process makes the
other exit with an error instead of hanging.
"""

import json
import os
import re
import shutil
import signal
import sys
import time

import jax
import numpy as np
import pytest

pytest.importorskip('tensorflow')
# The second tier (`python -m pytest -q -m slow`); .ci/run runs it after the
# default suite, every time.
pytestmark = pytest.mark.slow

from densenet_flax import checkpointing  # noqa: E402
from densenet_flax import evaluation  # noqa: E402

import multiprocess  # noqa: E402
import trainutil  # noqa: E402

# The whole digits training split, 16 px: 44 steps of 32 per epoch, long
# enough for a signal to land mid-run.
STEPS = 88
TIMEOUT = 300


@pytest.fixture(scope='module')
def config_file(digits_dir, tmp_path_factory):
  root = tmp_path_factory.mktemp('multiprocess')
  return trainutil.write_config_file(
    root / 'config.py',
    digits_dir,
    train_split='train',
    image_size=16,
    **{'augment.resize': 16},
    num_epochs=2,
    log_every_steps=2,
    checkpoint_every_steps=1000,
    eval_batch_size=50,
    # The runs compile the same programs: share XLA's cache between them.
    compilation_cache_dir=str(root / 'xla'),
  )


def train_on_two_processes(
  workdir, config_file, logs, name, *flags, timeout_s=60
):
  port = multiprocess.free_port()
  return multiprocess.Processes(
    lambda i: multiprocess.train_command(
      workdir,
      config_file,
      *multiprocess.distributed_train_flags(port, 2, i, timeout_s),
      *flags,
    ),
    2,
    logs,
    name,
  )


def wait_for_training(workdir, procs, timeout=TIMEOUT):
  """Returns once process 0 has logged a training step."""
  history = os.path.join(workdir, 'metrics.jsonl')
  deadline = time.monotonic() + timeout
  while not (os.path.exists(history) and open(history).read().strip()):
    for i, proc in enumerate(procs.procs):
      assert proc.poll() is None, procs.output(i)[-3000:]
    assert time.monotonic() < deadline
    time.sleep(0.05)


@pytest.fixture(scope='module')
def two_process_run(config_file, tmp_path_factory):
  """An uninterrupted 2-process run: its workdir."""
  workdir = str(tmp_path_factory.mktemp('two_processes') / 'run')
  train_on_two_processes(
    workdir, config_file, workdir + '-logs', 'train'
  ).check(TIMEOUT)
  return workdir


@pytest.fixture(scope='module')
def two_process_pmap_run(config_file, tmp_path_factory):
  """The same 2-process run under --config.parallelism=pmap: its workdir."""
  workdir = str(tmp_path_factory.mktemp('two_processes_pmap') / 'run')
  train_on_two_processes(
    workdir,
    config_file,
    workdir + '-logs',
    'train',
    '--config.parallelism=pmap',
  ).check(TIMEOUT)
  return workdir


@pytest.fixture(scope='module')
def one_process_run(config_file, tmp_path_factory):
  """The same config in one process with 2 devices: its workdir."""
  workdir = str(tmp_path_factory.mktemp('one_process') / 'run')
  out = multiprocess.run(
    multiprocess.train_command(workdir, config_file),
    timeout=TIMEOUT,
    devices=2,
  )
  assert out.returncode == 0, out.stderr[-3000:]
  assert '2 device(s) in 1 process(es)' in out.stderr
  return workdir


def assert_same_variables(a, b, **tolerance):
  leaves_a = jax.tree_util.tree_leaves_with_path(a)
  leaves_b = jax.tree_util.tree_leaves(b)
  assert len(leaves_a) == len(leaves_b) > 0
  for (path, x), y in zip(leaves_a, leaves_b):
    name = jax.tree_util.keystr(path)
    if tolerance:
      np.testing.assert_allclose(x, y, err_msg=name, **tolerance)
    else:
      np.testing.assert_array_equal(x, y, err_msg=name)


def test_two_processes_compute_what_one_process_with_two_devices_does(
  two_process_run, one_process_run
):
  # The checkpoint written by 2 processes restores here, in one.
  step_two, two = trainutil.final_variables(two_process_run)
  step_one, one = trainutil.final_variables(one_process_run)
  assert step_two == step_one == STEPS
  assert_same_variables(two, one, atol=2e-4, rtol=2e-4)
  reports = []
  for workdir in (two_process_run, one_process_run):
    with open(os.path.join(workdir, 'eval', f'test-{STEPS}.json')) as f:
      reports.append(json.load(f))
  assert reports[0]['num_examples'] == reports[1]['num_examples'] == 359
  assert abs(reports[0]['accuracy'] - reports[1]['accuracy']) <= 1 / 359


def test_two_processes_under_pmap_compute_the_same_bits_as_under_shard_map(
  two_process_run, two_process_pmap_run
):
  step_a, shard_map = trainutil.final_variables(two_process_run)
  step_b, pmap = trainutil.final_variables(two_process_pmap_run)
  assert step_a == step_b == STEPS
  assert_same_variables(shard_map, pmap)  # bitwise, with opt_state
  reports = []
  for workdir in (two_process_run, two_process_pmap_run):
    with open(os.path.join(workdir, 'eval', f'test-{STEPS}.json')) as f:
      reports.append(json.load(f))
  assert reports[0]['confusion_matrix'] == reports[1]['confusion_matrix']


def test_evaluate_on_two_processes_counts_every_example_once(
  one_process_run, tmp_path
):
  # A checkpoint written by one process, restored by two.
  workdir = str(tmp_path / 'run')
  shutil.copytree(one_process_run, workdir)
  shutil.rmtree(os.path.join(workdir, 'eval'))
  port = multiprocess.free_port()
  procs = multiprocess.Processes(
    lambda i: [
      sys.executable,
      os.path.join(trainutil.REPO, 'evaluate.py'),
      '--workdir',
      workdir,
      '--checkpoint',
      'latest',
      '--split',
      'test',
      '--distributed',
      f'--coordinator_address=127.0.0.1:{port}',
      '--num_processes=2',
      f'--process_id={i}',
    ],
    2,
    str(tmp_path / 'logs'),
    'evaluate',
  )
  procs.check(TIMEOUT)
  assert 'wrote' in procs.output(0) and 'wrote' not in procs.output(1)
  assert sorted(os.listdir(os.path.join(workdir, 'eval'))) == [
    f'test-{STEPS}.json',
    f'test-{STEPS}.png',
  ]
  with open(os.path.join(workdir, 'eval', f'test-{STEPS}.json')) as f:
    two = json.load(f)
  assert two['num_examples'] == np.sum(two['confusion_matrix']) == 359
  # The same checkpoint evaluated here, by one process: the same predictions.
  one = evaluation.evaluate(workdir, 'latest', split='test')
  assert one['confusion_matrix'] == two['confusion_matrix']
  assert one['accuracy'] == two['accuracy']


def test_sigterm_to_one_process_stops_both_at_one_step_and_resumes_exactly(
  two_process_run, config_file, tmp_path
):
  workdir = str(tmp_path / 'run')
  logs = str(tmp_path / 'logs')
  procs = train_on_two_processes(workdir, config_file, logs, 'first')
  wait_for_training(workdir, procs)
  procs.signal(1, signal.SIGTERM)
  procs.check(TIMEOUT)  # both exit 0
  stopped = re.search(r'SIGTERM at step (\d+)', procs.output(1))
  other = re.search(
    r'a stop signal to another process at step (\d+)', procs.output(0)
  )
  assert stopped and other, (procs.output(0)[-2000:], procs.output(1)[-2000:])
  step = int(stopped.group(1))
  assert int(other.group(1)) == step and 0 < step < STEPS
  ckpts = checkpointing.Checkpoints(os.path.join(workdir, 'checkpoints'))
  assert ckpts.all_steps() == [step]  # one checkpoint, at that step
  ckpts.close()

  # Resumed under the other parallelism (the run went under shard_map): the
  # checkpoint is the same either way.
  rerun = train_on_two_processes(
    workdir, config_file, logs, 'rerun', '--config.parallelism=pmap'
  )
  rerun.check(TIMEOUT)
  assert f'Resuming at step {step} of {STEPS}' in rerun.output(0)
  step_a, uninterrupted = trainutil.final_variables(two_process_run)
  step_b, resumed = trainutil.final_variables(workdir)
  assert step_a == step_b == STEPS
  assert_same_variables(uninterrupted, resumed)  # bitwise, with opt_state


@pytest.mark.parametrize('killed', [0, 1], ids=['coordinator', 'worker'])
def test_a_killed_process_makes_the_other_exit_with_an_error(
  config_file, tmp_path, killed
):
  timeout_s = 10
  workdir = str(tmp_path / 'run')
  logs = str(tmp_path / 'logs')
  every = '--config.checkpoint_every_steps=4'
  procs = train_on_two_processes(
    workdir, config_file, logs, 'train', every, timeout_s=timeout_s
  )
  history = os.path.join(workdir, 'metrics.jsonl')
  wait_for_training(workdir, procs)
  # After step 6, and once the asynchronous save of step 4 is committed (the
  # step's directory gets its final name): a kill before the commit leaves
  # nothing to resume from.
  committed = os.path.join(workdir, 'checkpoints', '4')
  while '"step": 6' not in open(history).read() or not os.path.isdir(committed):
    assert procs.procs[0].poll() is None, procs.output(0)[-3000:]
    time.sleep(0.05)
  procs.signal(killed, signal.SIGKILL)
  start = time.monotonic()
  survivor = 1 - killed
  codes = procs.wait(timeout=timeout_s + 30)
  elapsed = time.monotonic() - start
  assert codes[survivor] is not None, 'the survivor hung'
  assert codes[survivor] != 0
  assert elapsed < timeout_s + 5, elapsed
  assert f'Process {survivor} of 2 stopped' in procs.output(
    survivor
  ) or 'another task died' in procs.output(survivor), procs.output(survivor)[
    -3000:
  ]
  if killed == 0:  # the same command again resumes from the last checkpoint
    rerun = train_on_two_processes(workdir, config_file, logs, 'rerun', every)
    rerun.check(TIMEOUT)
    resumed = re.search(r'Resuming at step (\d+)', rerun.output(0))
    assert resumed and int(resumed.group(1)) >= 4, rerun.output(0)[-3000:]
    assert f'"step": {STEPS}' in rerun.output(0)
