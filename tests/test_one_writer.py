"""One training run per workdir, and readers beside it.

The lock (run_lock.py) is tested with real OS processes: a holder records
itself, a second writer is refused at once naming it and without touching
its record, a kill -9 leaves no lock, a waiting run takes the lock when the
holder ends, the heartbeat file stays fresh while its holder lives and is
taken over once stale, and train.py exits 75. Readers (evaluation,
inference) read only committed checkpoints, also when the run deletes the
step they read. The second tier runs train.py itself: two runs on one
workdir, kill -9 and resume, waiting, the heartbeat kind, two processes,
and evaluation in a loop beside a run that saves every step.
"""

import datetime
import errno
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip('tensorflow')

from densenet_flax import checkpointing  # noqa: E402
from densenet_flax import config_checks  # noqa: E402
from densenet_flax import evaluation  # noqa: E402
from densenet_flax import reporting  # noqa: E402
from densenet_flax import run_lock  # noqa: E402
from densenet_flax import training  # noqa: E402
from densenet_flax import run_directory  # noqa: E402

import multiprocess  # noqa: E402
import trainutil  # noqa: E402

# Another OS process holding a workdir's lock: no JAX, no TensorFlow.
HOLDER = """
import sys, time
from densenet_flax import run_lock
workdir, kind, stale_s, hold_s = sys.argv[1], sys.argv[2], *map(float, sys.argv[3:])
lock = run_lock.acquire(workdir, kind, stale_s=stale_s)
print('held', flush=True)
time.sleep(hold_s)
lock.release()
print('released', flush=True)
"""
HOST = socket.gethostname()


class Holder:
  def __init__(self, workdir, kind='flock', stale_s=120, hold_s=600):
    self.proc = subprocess.Popen(
      [sys.executable, '-c', HOLDER, str(workdir), kind, str(stale_s)]
      + [str(hold_s)],
      cwd=trainutil.REPO,
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
    )
    self.pid = self.proc.pid
    line = self.proc.stdout.readline()
    assert line == 'held\n', line + self.proc.stdout.read()

  def kill(self) -> None:
    self.proc.send_signal(signal.SIGKILL)
    self.proc.wait()


@pytest.fixture
def holders():
  """Holder(...) for the test; every one still alive is killed after."""
  made = []

  def make(*args, **kwargs):
    made.append(Holder(*args, **kwargs))
    return made[-1]

  yield make
  for holder in made:
    if holder.proc.poll() is None:
      holder.kill()
    holder.proc.stdout.close()


def fake_record(path, age_s, **fields):
  """A lock file as a run on another host left it, `age_s` seconds old."""
  record = {
    'host': 'elsewhere',
    'pid': 4242,
    'since': '2025-01-01T00:00:00Z',
    'command': ['train.py', '--workdir', 'runs/x'],
    'lock': 'heartbeat',
    'token': '0123',
  }
  path.write_text(json.dumps(dict(record, **fields)))
  then = time.time() - age_s
  os.utime(path, (then, then))


# --- the lock ---------------------------------------------------------------------


def test_the_holder_is_recorded_and_a_second_writer_refused_at_once(
  tmp_path, holders
):
  holder = holders(tmp_path)
  path = tmp_path / run_lock.LOCK_FILE
  record = json.loads(path.read_text())
  assert record['pid'] == holder.pid and record['host'] == HOST
  assert record['lock'] == 'flock' and record['command'][0] == '-c'
  since = datetime.datetime.strptime(record['since'], '%Y-%m-%dT%H:%M:%SZ')
  now = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
  assert abs((now - since).total_seconds()) < 60  # UTC
  before = path.read_bytes()
  start = time.monotonic()
  with pytest.raises(run_lock.WorkdirLockedError) as info:
    run_lock.acquire(str(tmp_path))
  assert time.monotonic() - start < 5  # refused, not waited
  message = str(info.value)
  assert message.startswith(f'{tmp_path} is in use by another training run')
  assert f'pid {holder.pid} on {HOST} since {record["since"]}' in message
  assert info.value.holder == record
  assert path.read_bytes() == before  # the refused run wrote nothing


def test_a_killed_holder_leaves_no_lock(tmp_path, holders):
  holders(tmp_path).kill()
  path = tmp_path / run_lock.LOCK_FILE
  assert path.exists()  # its record stays, its flock went with it
  with run_lock.acquire(str(tmp_path)) as lock:
    assert json.loads(path.read_text()) == lock.record
    assert lock.record['pid'] == os.getpid()
  assert not path.exists()  # released: removed


def test_a_waiting_run_takes_the_lock_when_the_holder_ends(
  tmp_path, holders, caplog
):
  holder = holders(tmp_path, hold_s=2)
  caplog.set_level(logging.INFO, 'densenet_flax.run_lock')
  with run_lock.acquire(str(tmp_path), wait_s=60) as lock:
    assert holder.proc.wait(timeout=10) == 0
    assert holder.proc.stdout.read() == 'released\n'
    assert lock.record['pid'] == os.getpid()
  waits = [r.getMessage() for r in caplog.records if 'waiting' in r.msg]
  assert len(waits) == 1, waits  # said once, naming the holder
  assert f'in use by pid {holder.pid} on {HOST}' in waits[0]
  assert 'waiting up to 60 s' in waits[0]


def test_a_wait_that_runs_out_is_refused_naming_the_holder(tmp_path, holders):
  holder = holders(tmp_path)
  start = time.monotonic()
  with pytest.raises(run_lock.WorkdirLockedError, match=r'\(waited 1 s\)'):
    run_lock.acquire(str(tmp_path), wait_s=1)
  assert time.monotonic() - start >= 1
  assert json.loads((tmp_path / run_lock.LOCK_FILE).read_text())['pid'] == (
    holder.pid
  )


@pytest.mark.parametrize('kind', ['heartbeat', 'auto'])
def test_a_stale_heartbeat_file_is_taken_over_and_a_fresh_one_refused(
  tmp_path, caplog, kind
):
  path = tmp_path / run_lock.LOCK_FILE
  fake_record(path, age_s=5)
  with pytest.raises(
    run_lock.WorkdirLockedError, match='pid 4242 on elsewhere'
  ):
    run_lock.acquire(str(tmp_path), kind, stale_s=60)
  assert json.loads(path.read_text())['pid'] == 4242  # untouched

  fake_record(path, age_s=3600)
  with caplog.at_level(logging.WARNING, 'densenet_flax.run_lock'):
    lock = run_lock.acquire(str(tmp_path), kind, stale_s=60)
  assert lock.kind == ('heartbeat' if kind == 'heartbeat' else 'flock')
  assert json.loads(path.read_text()) == lock.record
  (warning,) = [r.getMessage() for r in caplog.records]
  assert warning.startswith(f'Took over the workdir lock {path} of pid 4242 ')
  assert 'on elsewhere' in warning
  assert re.search(r'its heartbeat is 360\d s old', warning), warning
  lock.release()
  assert os.listdir(tmp_path) == []  # no lock, no takeover or temporary file


def test_the_heartbeat_keeps_a_live_holders_file_and_a_dead_ones_goes_stale(
  tmp_path, holders, caplog
):
  holder = holders(tmp_path, 'heartbeat', stale_s=1)  # a beat every 0.25 s
  path = tmp_path / run_lock.LOCK_FILE
  first = os.stat(path).st_mtime_ns
  time.sleep(1.5)  # past stale_s: only the heartbeat keeps the file fresh
  assert os.stat(path).st_mtime_ns > first
  with pytest.raises(run_lock.WorkdirLockedError, match=f'pid {holder.pid}'):
    run_lock.acquire(str(tmp_path), 'heartbeat', stale_s=1)
  holder.kill()
  time.sleep(1.5)
  with caplog.at_level(logging.WARNING, 'densenet_flax.run_lock'):
    with run_lock.acquire(str(tmp_path), 'heartbeat', stale_s=1) as lock:
      assert lock.record['pid'] == os.getpid()
  assert f'of pid {holder.pid} on {HOST}' in caplog.text


def test_auto_falls_back_to_a_heartbeat_file_where_flock_is_refused(
  tmp_path, monkeypatch, caplog
):
  def no_flock(fd, operation):
    raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

  monkeypatch.setattr(run_lock.fcntl, 'flock', no_flock)
  with pytest.raises(OSError, match='cannot flock.*use workdir_lock=heartbeat'):
    run_lock.acquire(str(tmp_path), 'flock')
  assert os.listdir(tmp_path) == []  # the file it made to flock is gone
  with caplog.at_level(logging.WARNING, 'densenet_flax.run_lock'):
    lock = run_lock.acquire(str(tmp_path), 'auto')
  assert lock.kind == 'heartbeat'
  assert f'The file system of {tmp_path} cannot flock' in caplog.text
  with pytest.raises(run_lock.WorkdirLockedError, match=f'pid {os.getpid()}'):
    run_lock.acquire(str(tmp_path), 'auto')  # the exclusive create refuses
  lock.release()
  assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
  'key,value,message',
  [
    (
      'workdir_lock',
      'nfs',
      "config.workdir_lock='nfs': expected one of 'auto', 'flock', "
      "'heartbeat', 'none'",
    ),
    ('wait_for_lock_s', -1, 'config.wait_for_lock_s=-1: expected a number >='),
    (
      'workdir_lock_stale_s',
      0,
      'config.workdir_lock_stale_s=0: expected a positive number of seconds',
    ),
  ],
)
def test_bad_lock_config_names_the_key(key, value, message):
  config = trainutil.tiny_config('unused', **{key: value})
  with pytest.raises(ValueError) as info:
    config_checks.validate(config)
  assert message in str(info.value)


def test_train_and_evaluate_is_refused_before_it_writes(tmp_path, holders):
  workdir = tmp_path / 'run'
  holder = holders(workdir)
  # Refused before any data is read: the data directory is never opened.
  config = trainutil.tiny_config(str(tmp_path / 'no-data'))
  with pytest.raises(run_lock.WorkdirLockedError, match=f'pid {holder.pid}'):
    training.train_and_evaluate(config, str(workdir))
  assert os.listdir(workdir) == [run_lock.LOCK_FILE]


def test_kind_none_takes_no_lock(tmp_path, holders):
  holder = holders(tmp_path)
  config = trainutil.tiny_config('unused', workdir_lock='none')
  with run_lock.hold(str(tmp_path), config) as lock:
    assert lock is None
  assert run_lock.read_holder(str(tmp_path))['pid'] == holder.pid


@pytest.mark.parametrize('kind', ['auto', 'heartbeat'])
def test_train_py_exits_75_naming_the_holder(tmp_path, holders, kind):
  workdir = tmp_path / 'run'
  if kind == 'auto':
    pid, host = holders(workdir).pid, HOST
  else:  # a fresh heartbeat file of a run on another host
    workdir.mkdir()
    fake_record(workdir / run_lock.LOCK_FILE, age_s=5)
    pid, host = 4242, 'elsewhere'
  config_file = trainutil.write_config_file(
    tmp_path / 'config.py', str(tmp_path / 'no-data')
  )
  out = multiprocess.run(
    multiprocess.train_command(
      workdir, config_file, f'--config.workdir_lock={kind}'
    ),
    timeout=120,
  )
  assert out.returncode == 75, out.stderr[-3000:]
  assert (
    f'error: {workdir} is in use by another training run: pid {pid} on {host}'
  ) in out.stderr
  assert 'Traceback' not in out.stderr
  assert os.listdir(workdir) == [run_lock.LOCK_FILE]


# --- readers beside a run ---------------------------------------------------------


def state(step: int) -> dict:
  return {'params': {'w': jnp.full(100, float(step))}}


def save(ckpts, steps, metrics=None):
  for step in steps:
    ckpts.save(
      step, state(step), {'model': 'm'}, eval_metrics=(metrics or {}).get(step)
    )
  ckpts.wait()


def test_a_step_deleted_while_read_is_read_again_from_the_newest(
  tmp_path, caplog
):
  writer = checkpointing.Checkpoints(str(tmp_path), keep=2)
  save(writer, [1, 2])
  reader = checkpointing.Checkpoints(str(tmp_path), read_only=True)
  tried = []

  def read(step):
    tried.append(step)
    if len(tried) == 1:  # the run saves two more and deletes 1 and 2
      save(writer, [3, 4])
      assert sorted(os.listdir(tmp_path)) == ['3', '4']
    return reader.read(step)

  caplog.set_level(logging.INFO, 'densenet_flax.checkpointing')
  step, read_state = reader.restore_committed('latest', read)
  assert (step, tried) == (4, [2, 4])
  np.testing.assert_array_equal(jax.device_get(read_state)['params']['w'], 4.0)
  assert 'Checkpoint 2 in' in caplog.text and 'was deleted while' in caplog.text
  assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
  writer.close()
  reader.close()


def test_a_best_step_deleted_while_read_is_resolved_again(tmp_path, caplog):
  writer = checkpointing.Checkpoints(str(tmp_path), keep=2)
  save(writer, [1, 2], {1: {'accuracy': 0.5}, 2: {'accuracy': 0.6}})
  reader = checkpointing.Checkpoints(str(tmp_path), read_only=True)
  tried = []

  def read(step):
    tried.append(step)
    if len(tried) == 1:  # a new best (3), then two later steps: 1, 2 go
      save(writer, [3, 4, 5], {3: {'accuracy': 0.9}})
      assert sorted(os.listdir(tmp_path)) == ['3', '4', '5']
    return reader.read(step)

  with caplog.at_level(logging.WARNING):
    step, read_state = reader.restore_committed('best', read)
  assert (step, tried) == (3, [2, 3])
  np.testing.assert_array_equal(jax.device_get(read_state)['params']['w'], 3.0)
  assert not caplog.records
  writer.close()
  reader.close()


def test_the_best_is_listed_again_when_the_listed_steps_were_deleted(
  tmp_path, caplog
):
  writer = checkpointing.Checkpoints(str(tmp_path), keep=1)
  save(writer, [1, 2], {1: {'accuracy': 0.5}})
  reader = checkpointing.Checkpoints(str(tmp_path), read_only=True)
  assert reader.all_steps() == [1, 2]  # listed; then a new best: 1, 2 go
  save(writer, [3], {3: {'accuracy': 0.9}})
  assert os.listdir(tmp_path) == ['3']
  caplog.set_level(logging.INFO, 'densenet_flax.checkpointing')
  assert reader.best_step() == 3
  assert 'Checkpoint 1 was deleted while its record was read' in caplog.text
  writer.close()
  reader.close()


def test_a_save_in_flight_is_never_read(tmp_path):
  writer = checkpointing.Checkpoints(str(tmp_path), keep=5)
  save(writer, [1, 2])
  writer.close()
  # What a save in flight (or cut short) looks like: Orbax writes a step
  # under a temporary name and renames it once complete.
  partial = tmp_path / '3.orbax-checkpoint-tmp-1700000000'
  shutil.copytree(tmp_path / '2', partial)
  shutil.rmtree(partial / 'meta')
  reader = checkpointing.Checkpoints(str(tmp_path), read_only=True)
  assert reader.all_steps() == [1, 2]
  step, read_state = reader.restore_committed('latest', reader.read)
  assert step == 2
  np.testing.assert_array_equal(jax.device_get(read_state)['params']['w'], 2.0)
  reader.close()
  assert partial.is_dir()  # a reader touches nothing


# --- train.py for real (second tier) ----------------------------------------------


def start_training(workdir, config_file, log, *flags):
  """train.py in the background, its output to `log`."""
  with open(log, 'w') as out:
    return subprocess.Popen(
      multiprocess.train_command(workdir, config_file, *flags),
      stdout=out,
      stderr=subprocess.STDOUT,
      env=multiprocess.cpu_env(),
      cwd=trainutil.REPO,
    )


def wait_for(condition, proc, log, timeout=300):
  deadline = time.monotonic() + timeout
  while not condition():
    assert proc.poll() is None, open(log).read()[-3000:]
    assert time.monotonic() < deadline, open(log).read()[-3000:]
    time.sleep(0.05)


def holder_pid(workdir):
  record = run_lock.read_holder(str(workdir))
  return record and record['pid']


def train_rows(workdir):
  history = reporting.read_history(os.path.join(workdir, 'metrics.jsonl'))
  return [r['step'] for r in history if 'train/loss' in r]


@pytest.mark.slow  # second tier: a training run of about a minute
def test_two_train_py_on_one_workdir_the_second_exits_75_the_first_unharmed(
  digits_dir, tmp_path
):
  # The whole training split: 44 steps an epoch, 132 in all, logged at every
  # second step; long enough for the second run to start and be refused.
  config_file = trainutil.write_config_file(
    tmp_path / 'config.py',
    digits_dir,
    train_split='train',
    num_epochs=3,
    log_every_steps=2,
    checkpoint_every_steps=10,
  )
  workdir = tmp_path / 'run'
  first = start_training(workdir, config_file, tmp_path / 'first.log')
  wait_for(
    lambda: os.path.exists(workdir / 'metrics.jsonl'),
    first,
    tmp_path / 'first.log',
  )
  assert holder_pid(workdir) == first.pid
  start = time.monotonic()
  second = multiprocess.run(
    multiprocess.train_command(workdir, config_file),
    timeout=300,
  )
  print(f'the second run was refused in {time.monotonic() - start:.1f} s')
  assert first.poll() is None  # refused while the first trained
  assert second.returncode == 75, second.stderr[-3000:]
  assert f'in use by another training run: pid {first.pid} on' in (
    second.stderr
  )
  assert first.wait(timeout=600) == 0, open(tmp_path / 'first.log').read()
  assert train_rows(workdir) == list(range(2, 133, 2))  # each step once
  history = reporting.read_history(os.path.join(workdir, 'metrics.jsonl'))
  assert [r['step'] for r in history if 'eval/accuracy' in r] == [44, 88, 132]
  assert not os.path.exists(workdir / run_lock.LOCK_FILE)


@pytest.mark.slow  # second tier: two short training runs
def test_after_kill_9_of_the_holder_the_next_run_starts_at_once_and_resumes(
  digits_dir, tmp_path
):
  config_file = trainutil.write_config_file(
    tmp_path / 'config.py',
    digits_dir,
    train_split='train',
    num_epochs=2,
    checkpoint_every_steps=4,
  )
  workdir = tmp_path / 'run'
  first = start_training(workdir, config_file, tmp_path / 'first.log')
  wait_for(
    lambda: os.path.isdir(workdir / 'checkpoints' / '8'),  # committed
    first,
    tmp_path / 'first.log',
  )
  first.send_signal(signal.SIGKILL)
  first.wait()
  assert holder_pid(workdir) == first.pid  # its record stays behind
  rerun = multiprocess.run(
    multiprocess.train_command(workdir, config_file),
    timeout=600,
  )
  assert rerun.returncode == 0, rerun.stderr[-3000:]  # not refused, no wait
  assert 'waiting' not in rerun.stderr
  resumed = int(rerun.stderr.split('Resuming at step ')[1].split()[0])
  assert 8 <= resumed < 88
  assert '"step": 88' in rerun.stdout
  assert not os.path.exists(workdir / run_lock.LOCK_FILE)


@pytest.mark.slow  # second tier: a training run
def test_wait_for_lock_s_waits_for_the_holder_then_trains(digits_dir, tmp_path):
  config_file = trainutil.write_config_file(
    tmp_path / 'config.py', digits_dir, num_epochs=1
  )
  workdir = tmp_path / 'run'
  log = tmp_path / 'train.log'
  lock = run_lock.acquire(str(workdir))  # this process is the other run
  try:
    proc = start_training(
      workdir, config_file, log, '--config.wait_for_lock_s=300'
    )
    wait_for(lambda: 'waiting up to 300 s' in open(log).read(), proc, log)
    assert f'in use by pid {os.getpid()} on {HOST}' in open(log).read()
    assert os.listdir(workdir) == [run_lock.LOCK_FILE]  # it wrote nothing
  finally:
    lock.release()
  assert proc.wait(timeout=600) == 0, open(log).read()[-3000:]
  assert train_rows(workdir) == [4, 5, 8]  # logged and checkpoint steps


@pytest.mark.slow  # second tier: a training run
def test_train_py_takes_over_a_stale_heartbeat_file(digits_dir, tmp_path):
  config_file = trainutil.write_config_file(
    tmp_path / 'config.py', digits_dir, num_epochs=1
  )
  workdir = tmp_path / 'run'
  workdir.mkdir()
  fake_record(workdir / run_lock.LOCK_FILE, age_s=3600)
  out = multiprocess.run(
    multiprocess.train_command(
      workdir, config_file, '--config.workdir_lock=heartbeat'
    ),
    timeout=600,
  )
  assert out.returncode == 0, out.stderr[-3000:]
  assert 'Took over the workdir lock' in out.stderr
  assert 'of pid 4242 on elsewhere since 2025-01-01T00:00:00Z' in out.stderr
  assert '"step": 8' in out.stdout
  assert not os.path.exists(workdir / run_lock.LOCK_FILE)


def train_on_two_processes(workdir, config_file, logs, name):
  port = multiprocess.free_port()
  return multiprocess.Processes(
    lambda i: multiprocess.train_command(
      workdir, config_file, *multiprocess.distributed_train_flags(port, 2, i)
    ),
    2,
    logs,
    name,
  )


@pytest.mark.slow  # second tier: real multi-process runs
def test_two_processes_hold_one_lock_and_are_refused_together(
  digits_dir, tmp_path
):
  config_file = trainutil.write_config_file(
    tmp_path / 'config.py', digits_dir, train_split='train', num_epochs=1
  )
  workdir = tmp_path / 'run'
  logs = str(tmp_path / 'logs')
  lock = run_lock.acquire(str(workdir))  # another run holds the workdir
  refused = train_on_two_processes(workdir, config_file, logs, 'refused')
  assert refused.wait(timeout=300) == [75, 75]
  for i in range(2):  # process 1 has process 0's answer
    assert (
      f'in use by another training run: pid {os.getpid()} on {HOST}'
    ) in refused.output(i), refused.output(i)[-3000:]
  assert os.listdir(workdir) == [run_lock.LOCK_FILE]
  lock.release()

  procs = train_on_two_processes(workdir, config_file, logs, 'train')
  wait_for(
    lambda: holder_pid(workdir),
    procs.procs[0],
    procs.paths[0],
  )
  assert holder_pid(workdir) == procs.procs[0].pid  # process 0's, once
  one = multiprocess.run(
    multiprocess.train_command(workdir, config_file),
    timeout=300,
  )
  assert procs.procs[0].poll() is None
  assert one.returncode == 75, one.stderr[-3000:]
  assert f'pid {procs.procs[0].pid} on {HOST}' in one.stderr
  procs.check(timeout=600)
  assert '"step": 44' in procs.output(0)
  assert not os.path.exists(workdir / run_lock.LOCK_FILE)


@pytest.mark.slow  # second tier: a training run saving every step
# A read cut short by the run's deletion leaves Orbax's coroutines of it
# unawaited; Python reports them as it collects them.
@pytest.mark.filterwarnings('ignore::pytest.PytestUnraisableExceptionWarning')
def test_evaluation_beside_a_run_saving_every_step_reads_committed_steps(
  digits_dir, tmp_path, caplog
):
  config_file = trainutil.write_config_file(
    tmp_path / 'config.py',
    digits_dir,
    num_epochs=6,
    checkpoint_every_steps=1,
    keep_checkpoints=1,  # every save deletes the step before
  )
  workdir = tmp_path / 'run'
  log = tmp_path / 'train.log'
  proc = start_training(workdir, config_file, log)
  checkpoints = workdir / 'checkpoints'
  wait_for(
    lambda: (
      checkpoints.is_dir()
      and any(name.isdigit() for name in os.listdir(checkpoints))
    ),
    proc,
    log,
  )
  caplog.set_level(logging.INFO, 'densenet_flax')
  reads, errors = [], []
  while proc.poll() is None:
    try:  # the evaluate command's library call, then what inference does
      report = evaluation.evaluate(str(workdir), 'latest', split='test')
      assert report['num_examples'] == 359
      reads.append(('evaluate', report['step'], None))
      for _ in range(5):
        which = 'best' if max(s for _, s, _ in reads) >= 8 else 'latest'
        _, variables, step = run_directory.restore_variables(
          str(workdir), which
        )
        reads.append((which, step, jax.device_get(variables)))
    except Exception as e:  # noqa: BLE001 - collected, asserted below
      errors.append(repr(e))
  assert proc.wait() == 0, open(log).read()[-3000:]
  assert not errors, errors
  saved = {
    int(line.split('Saving checkpoint ')[1].split()[0])
    for line in open(log)
    if 'Saving checkpoint ' in line
  }
  assert saved == set(range(1, 49))
  again = caplog.text.count('was deleted while')
  print(f'{len(reads)} reads beside the run, {again} read again; steps')
  print([step for _, step, _ in reads])
  assert len(reads) >= 10
  _, want = trainutil.final_variables(str(workdir))
  shapes = jax.tree_util.tree_map(
    np.shape, {'params': want['params'], 'batch_stats': want['batch_stats']}
  )
  for which, step, variables in reads:
    assert step in saved, (which, step)  # committed steps only
    if variables is not None:  # whole: every array, finite
      assert jax.tree_util.tree_map(np.shape, variables) == shapes
      assert all(np.isfinite(x).all() for x in jax.tree.leaves(variables))
  assert 'cannot be restored' not in caplog.text  # no false alarm of damage
