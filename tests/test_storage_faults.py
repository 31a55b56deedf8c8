"""When storage misbehaves nothing is lost: damage is told from failure, a
full disk stops the run cleanly, and the history only grows."""

import errno
import glob
import json
import os
import shutil
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip('tensorflow')

from densenet_flax import checkpointing  # noqa: E402
from densenet_flax import resume_policy  # noqa: E402
from densenet_flax import config_keys  # noqa: E402
from densenet_flax import reporting  # noqa: E402
from densenet_flax import training  # noqa: E402

import multiprocess  # noqa: E402
import trainutil  # noqa: E402

STATE = {'params': {'w': jnp.arange(1000.0)}, 'batch_stats': {'m': jnp.ones(3)}}
ABSTRACT = jax.tree_util.tree_map(
  lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), STATE
)


def two_checkpoints(directory):
  """Steps 1 and 2 of a small state, written by Orbax."""
  ckpts = checkpointing.Checkpoints(str(directory), keep=5)
  for step in (1, 2):
    ckpts.save(step, STATE, {'model': 'm'})
  ckpts.close()
  return checkpointing.Checkpoints(str(directory), keep=5)


def _files(step_dir, pattern):
  found = [
    p for p in glob.glob(os.path.join(step_dir, pattern)) if os.path.isfile(p)
  ]
  assert found, pattern
  return found


def truncate_chunks(step_dir):
  for path in _files(step_dir, 'state/ocdbt.process_0/d/*'):
    with open(path, 'r+b') as f:
      f.truncate(os.path.getsize(path) // 2)


def delete_a_chunk(step_dir):
  for path in _files(step_dir, 'state/ocdbt.process_0/d/*'):
    os.remove(path)


def delete_the_manifest(step_dir):
  os.remove(_files(step_dir, 'state/manifest.ocdbt')[0])


def delete_the_array_metadata(step_dir):
  os.remove(_files(step_dir, 'state/_METADATA')[0])


def garble(pattern):
  def damage(step_dir):
    for path in _files(step_dir, pattern):
      with open(path, 'wb') as f:
        f.write(b'\x00\xff not what was written {{')

  damage.__name__ = f'garble {pattern}'
  return damage


def empty_the_directory(step_dir):
  shutil.rmtree(step_dir)
  os.makedirs(step_dir)


DAMAGE = [
  truncate_chunks,
  delete_a_chunk,
  delete_the_manifest,
  delete_the_array_metadata,
  garble('state/_METADATA'),
  garble('state/_sharding'),
  garble('state/manifest.ocdbt'),
  garble('meta/metadata'),
  empty_the_directory,
]


def restore_with_record(ckpts):
  return lambda step: (ckpts.meta(step), ckpts.restore(step, ABSTRACT)[0])


@pytest.mark.parametrize('damage', DAMAGE, ids=lambda d: d.__name__)
def test_each_kind_of_damage_falls_back_to_the_previous_checkpoint(
  tmp_path, damage, caplog
):
  """From the errors Orbax and TensorStore really raise for each kind."""
  ckpts = two_checkpoints(tmp_path / 'checkpoints')
  damage(str(tmp_path / 'checkpoints' / '2'))
  with caplog.at_level('WARNING', logger='densenet_flax'):
    step, (_, state) = ckpts.newest_restorable(
      restore_with_record(ckpts), set_aside=True
    )
  assert step == 1
  np.testing.assert_array_equal(state['params']['w'], STATE['params']['w'])
  assert 'Checkpoint 2' in caplog.text and 'cannot be restored' in caplog.text
  assert os.listdir(tmp_path / 'checkpoints_set_aside') == ['2']
  assert ckpts.all_steps() == [1]
  ckpts.close()


@pytest.mark.parametrize(
  'error',
  [
    OSError(errno.EIO, 'Input/output error'),
    PermissionError(errno.EACCES, 'Permission denied'),
    MemoryError('out of memory while restoring'),
    TypeError("'NoneType' object is not subscriptable"),
    KeyError('params'),
    # What TensorStore says when the operating system fails a read.
    ValueError(
      'UNAVAILABLE: Error reading local file "x": [OS error: '
      'Input/output error]'
    ),
    ValueError('RESOURCE_EXHAUSTED: Out of memory'),
  ],
  ids=lambda e: type(e).__name__ + ':' + str(e)[:20],
)
def test_an_error_that_is_not_damage_stops_and_moves_nothing(tmp_path, error):
  ckpts = two_checkpoints(tmp_path / 'checkpoints')

  def restore(step):
    raise error

  with pytest.raises(checkpointing.CheckpointReadError) as info:
    ckpts.newest_restorable(restore, set_aside=True)
  message = str(info.value)
  assert f'Checkpoint 2 in {tmp_path / "checkpoints"}' in message
  assert type(error).__name__ in message and 'nothing was moved' in message
  assert info.value.__cause__ is error
  assert ckpts.all_steps() == [1, 2]
  assert not os.path.exists(tmp_path / 'checkpoints_set_aside')
  ckpts.close()


def test_the_classification_follows_the_chain_of_causes():
  truncated = ValueError(
    'OUT_OF_RANGE: Error reading "params.w/0": Requested '
    'byte range [0, 2291) is not valid'
  )
  try:
    try:
      raise truncated
    except ValueError as e:  # Orbax wraps TensorStore's error
      raise Exception('Encountered error while reading array index') from e
  except Exception as wrapped:  # noqa: BLE001
    assert 'OUT_OF_RANGE' in checkpointing.damage_shown_by(wrapped)
  assert checkpointing.damage_shown_by(FileNotFoundError('x')) is not None
  assert checkpointing.damage_shown_by(OSError(errno.EIO, 'x')) is None
  assert checkpointing.damage_shown_by(ValueError('bad shape')) is None
  # A failure anywhere in the chain wins: an I/O error raised while handling
  # a missing file, or an errno that absl reports as FAILED_PRECONDITION.
  try:
    try:
      raise FileNotFoundError('_METADATA')
    except FileNotFoundError:
      raise OSError(errno.EIO, 'Input/output error')  # noqa: B904
  except OSError as during:
    assert checkpointing.damage_shown_by(during) is None
  read_only = ValueError(
    'FAILED_PRECONDITION: Error writing: [OS error: Read-only file system]'
  )
  assert checkpointing.damage_shown_by(read_only) is None
  assert checkpointing.damage_shown_by(MemoryError()) is None


@pytest.fixture(scope='module')
def trained(digits_dir, tmp_path_factory):
  """A finished tiny run (16 steps; checkpoints 15 and 16)."""
  workdir = str(tmp_path_factory.mktemp('trained'))
  training.train_and_evaluate(trainutil.tiny_config(digits_dir), workdir)
  return workdir


def copy_of(trained, tmp_path):
  workdir = str(tmp_path / 'run')
  shutil.copytree(trained, workdir)
  return workdir


def snapshot(workdir):
  """Every file under workdir with its bytes."""
  files = {}
  for root, _, names in os.walk(workdir):
    for name in names:
      path = os.path.join(root, name)
      with open(path, 'rb') as f:
        files[os.path.relpath(path, workdir)] = f.read()
  return files


def test_a_failing_read_leaves_everything_and_the_next_run_resumes(
  trained, digits_dir, tmp_path, monkeypatch
):
  """Every restore raising OSError(EIO): the run stops naming the step, the
  path and the error; no checkpoint moves and no file changes."""
  workdir = copy_of(trained, tmp_path)
  before = snapshot(workdir)

  def failing(self, step, *args, **kwargs):
    raise OSError(errno.EIO, 'Input/output error', f'{self.directory}/{step}')

  with monkeypatch.context() as patch:
    patch.setattr(checkpointing.Checkpoints, 'restore', failing)
    with pytest.raises(
      checkpointing.CheckpointReadError,
      match=r'Checkpoint 16 in .*checkpoints could not be '
      r'read: OSError: \[Errno 5\] Input/output error',
    ):
      training.train_and_evaluate(trainutil.tiny_config(digits_dir), workdir)
  after = snapshot(workdir)
  assert after.keys() == before.keys()
  for name in ('metrics.jsonl', 'config.json', 'normalization.json'):
    assert after[name] == before[name], name
  assert {p.split('/')[1] for p in after if p.startswith('checkpoints/')} == {
    '15',
    '16',
  }
  summary = training.train_and_evaluate(
    trainutil.tiny_config(digits_dir, num_epochs=3, allow_config_change=True),
    workdir,
  )
  assert summary['step'] == 24  # resumed at 16, not retrained from 0


def test_all_checkpoints_damaged_stops_until_a_deliberate_restart(
  trained, digits_dir, tmp_path
):
  workdir = copy_of(trained, tmp_path)
  checkpoints = os.path.join(workdir, 'checkpoints')
  for step in ('15', '16'):
    truncate_chunks(os.path.join(checkpoints, step))
  history = reporting.read_history(os.path.join(workdir, 'metrics.jsonl'))
  with pytest.raises(checkpointing.NoRestorableCheckpointError) as info:
    training.train_and_evaluate(trainutil.tiny_config(digits_dir), workdir)
  message = str(info.value)
  assert 'step 16: ' in message and 'step 15: ' in message
  assert 'OUT_OF_RANGE' in message and '--config.restart=True' in message
  assert sorted(os.listdir(checkpoints)) == ['15', '16']  # nothing moved
  assert (
    reporting.read_history(os.path.join(workdir, 'metrics.jsonl')) == history
  )

  summary = training.train_and_evaluate(
    trainutil.tiny_config(digits_dir, restart=True), workdir
  )
  assert summary['step'] == 16
  [aside] = os.listdir(os.path.join(workdir, 'checkpoints_set_aside'))
  assert aside.startswith('restart-') and sorted(
    os.listdir(os.path.join(workdir, 'checkpoints_set_aside', aside))
  ) == ['15', '16']
  [side] = glob.glob(os.path.join(workdir, 'metrics.superseded-*.jsonl'))
  assert reporting.read_history(side) == history  # every old row, kept
  live = reporting.read_history(os.path.join(workdir, 'metrics.jsonl'))
  assert [r['step'] for r in live if 'eval/accuracy' in r] == [8, 16]

  # The same command line again (a requeued job) resumes the restarted run:
  # it does not restart a second time.
  summary = training.train_and_evaluate(
    trainutil.tiny_config(digits_dir, restart=True), workdir
  )
  assert summary['step'] == 16
  assert os.listdir(os.path.join(workdir, 'checkpoints_set_aside')) == [aside]
  assert '16' in os.listdir(checkpoints)
  assert reporting.read_history(os.path.join(workdir, 'metrics.jsonl')) == live


def test_a_rewinding_resume_moves_the_rows_it_redoes_to_a_side_file(
  trained, digits_dir, tmp_path
):
  """Checkpoint 16 lost (a crash before it committed): the run resumes at
  15, and the rows of step 16 it is about to redo move aside."""
  workdir = copy_of(trained, tmp_path)
  history = reporting.read_history(os.path.join(workdir, 'metrics.jsonl'))
  shutil.rmtree(os.path.join(workdir, 'checkpoints', '16'))
  training.train_and_evaluate(trainutil.tiny_config(digits_dir), workdir)
  [side] = glob.glob(os.path.join(workdir, 'metrics.superseded-*.jsonl'))
  moved = reporting.read_history(side)
  assert moved and moved == [r for r in history if r['step'] > 15]
  live = reporting.read_history(os.path.join(workdir, 'metrics.jsonl'))
  assert [r for r in live if r['step'] <= 15] == [
    r for r in history if r['step'] <= 15
  ]
  assert [r['step'] for r in live if r['step'] > 15] == [16, 16]  # redone


def test_an_incomplete_last_row_is_left_out_and_kept(tmp_path, caplog):
  path = tmp_path / 'metrics.jsonl'
  path.write_text('{"step": 1, "train/loss": 2.0}\n{"step": 2, "tra')
  with caplog.at_level('WARNING', logger='densenet_flax'):
    assert reporting.read_history(str(path)) == [{'step': 1, 'train/loss': 2.0}]
  assert 'incomplete' in caplog.text
  writer = reporting.MetricWriter.__new__(reporting.MetricWriter)
  writer.enabled, writer.history_path = True, str(path)
  side = writer.supersede_after(1)
  assert reporting.read_history(side) == [
    {'incomplete_line': '{"step": 2, "tra'}
  ]
  assert path.read_text() == '{"step": 1, "train/loss": 2.0}\n'
  path.write_text('{"step": 1}\n{"st\n{"step": 3}\n')
  with pytest.raises(
    ValueError,
    match=r'metrics.jsonl, line 2: not a JSON '
    r'row',
  ):
    reporting.read_history(str(path))


def test_a_row_cut_just_before_its_newline_stays_a_row_of_its_own(tmp_path):
  path = tmp_path / 'metrics.jsonl'
  path.write_text('{"step": 1}\n{"step": 2}')
  writer = reporting.MetricWriter.__new__(reporting.MetricWriter)
  writer.enabled, writer.history_path = True, str(path)
  writer._append({'step': 3})
  assert reporting.read_history(str(path)) == [
    {'step': 1},
    {'step': 2},
    {'step': 3},
  ]


def test_every_config_key_is_classified():
  keys = set(config_keys.base_config())
  result, bookkeeping = (
    set(resume_policy.RESULT_KEYS),
    set(resume_policy.BOOKKEEPING_KEYS),
  )
  assert not result & bookkeeping
  assert keys == result | bookkeeping, (
    keys - result - bookkeeping,
    (result | bookkeeping) - keys,
  )
  config = config_keys.base_config()
  stored = json.loads(config.to_json())
  config.shuffle_buffer = 1024
  assert resume_policy.config_changes(stored, config) == {
    'shuffle_buffer': (16384, 1024)
  }


def test_a_run_from_before_select_on_resumes_as_it_selected():
  """It tested its last state when it evaluated on its test split, and
  selected on its eval split otherwise."""
  config = config_keys.base_config()
  config.eval_split = config.test_split = 'test'
  stored = json.loads(config.to_json())
  del stored['select_on']
  config.select_on = 'last'  # configs/default.py's
  assert resume_policy.config_changes(stored, config) == {}
  config.select_on = 'validation'
  assert resume_policy.config_changes(stored, config) == {
    'select_on': ('last', 'validation')
  }
  config.eval_split = 'validation'
  stored = json.loads(config.to_json())
  del stored['select_on']
  assert resume_policy.config_changes(stored, config) == {}


# --- a full disk -------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path):
  """An 8 MB tmpfs, mounted for the test (needs root)."""
  mount = tmp_path / 'disk'
  mount.mkdir()
  if os.geteuid() != 0:
    pytest.skip('mounting a small tmpfs to fill needs root')
  done = subprocess.run(
    ['mount', '-t', 'tmpfs', '-o', 'size=8m', 'tmpfs', str(mount)],
    capture_output=True,
    text=True,
  )
  if done.returncode != 0:
    pytest.skip(f'mount -t tmpfs failed here: {done.stderr.strip()}')
  yield mount
  subprocess.run(['umount', '-l', str(mount)], check=False)


def fill(disk, leave_bytes):
  """A filler file that leaves about `leave_bytes` free; returns its path."""
  stats = os.statvfs(disk)
  free = stats.f_bavail * stats.f_frsize
  path = os.path.join(disk, 'filler')
  with open(path, 'wb') as f:
    f.write(b'\0' * max(0, free - leave_bytes))
  return path


# Room for the logs' rows, none for a checkpoint (about 180 kB here).
SLACK = 64 * 1024


def test_a_disk_filled_during_a_run_stops_it_loses_nothing_and_resumes(
  digits_dir, small_disk, monkeypatch
):
  from densenet_flax.data import pipeline

  workdir = str(small_disk / 'run')
  config = lambda: trainutil.tiny_config(  # noqa: E731
    digits_dir, checkpoint_every_steps=1, test_split=''
  )
  batches = pipeline.InputPipeline.train_batches
  filler = []

  def filled_at_the_eighth(self, start_step=0):
    for i, batch in enumerate(batches(self, start_step)):
      if i == 7:
        filler.append(fill(small_disk, SLACK))
      yield batch

  with monkeypatch.context() as patch:
    patch.setattr(pipeline.InputPipeline, 'train_batches', filled_at_the_eighth)
    with pytest.raises(checkpointing.CheckpointSaveError) as info:
      training.train_and_evaluate(config(), workdir)
  message = str(info.value)
  assert 'the disk is full' in message and 'No space left' in message
  unsaved = int(message.split('Checkpoint ')[1].split()[0])
  last = int(
    message.split('last complete checkpoint is step ')[1][:-1].split('.')[0]
  )
  assert 1 <= last < unsaved <= 16
  ckpts = checkpointing.Checkpoints(os.path.join(workdir, 'checkpoints'))
  assert max(ckpts.all_steps()) == last
  for step in ckpts.all_steps():  # every complete checkpoint reads back
    assert int(jax.device_get(ckpts.read(step))['step']) == step
  ckpts.close()
  history = reporting.read_history(os.path.join(workdir, 'metrics.jsonl'))
  assert [r['step'] for r in history if 'train/loss' in r][:last] == list(
    range(1, last + 1)
  )

  os.remove(filler[0])  # space freed: the same command resumes and finishes
  summary = training.train_and_evaluate(config(), workdir)
  assert summary['step'] == 16 and summary['interrupted'] is None
  assert not glob.glob(os.path.join(workdir, 'checkpoints', '*tmp*'))


def test_train_py_on_a_full_disk_exits_non_zero_naming_the_step(
  digits_dir, small_disk, tmp_path
):
  workdir = small_disk / 'run'
  config_file = trainutil.write_config_file(
    tmp_path / 'config.py', digits_dir, checkpoint_every_steps=1, test_split=''
  )
  fill(small_disk, SLACK)
  out = subprocess.run(
    multiprocess.train_command(
      workdir, config_file, '--config.progress_bar=False'
    ),
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert out.returncode != 0
  assert (
    'CheckpointSaveError: Checkpoint 1 could not be written to '
    f'{workdir / "checkpoints"}: the disk is full'
  ) in out.stderr, out.stderr[-3000:]
  assert 'There is no complete checkpoint yet' in out.stderr


def test_an_asynchronous_save_error_surfaces_at_the_wait_and_once(small_disk):
  fill(small_disk, SLACK)
  ckpts = checkpointing.Checkpoints(str(small_disk / 'checkpoints'))
  # 800 kB that do not compress, against 64 kB free.
  big = {
    'params': {
      'w': jnp.asarray(np.random.default_rng(0).random(200_000, np.float32))
    },
    'batch_stats': {},
  }
  ckpts.save(1, big, {'model': 'm'})  # starts in the background
  with pytest.raises(
    checkpointing.CheckpointSaveError,
    match='Checkpoint 1 could not be written.*disk is full',
  ):
    ckpts.wait()
  ckpts.close()  # already reported: closing does not raise it again


def test_files_written_whole_get_the_permissions_of_plain_writes(tmp_path):
  from densenet_flax import atomic

  plain, whole = tmp_path / 'plain.json', tmp_path / 'whole.json'
  plain.write_text('{}')
  atomic.write_text(str(whole), '{}')
  assert whole.read_text() == '{}'
  assert whole.stat().st_mode == plain.stat().st_mode
  assert sorted(p.name for p in tmp_path.iterdir()) == [
    'plain.json',
    'whole.json',
  ]
