"""Orbax checkpoints of the train state: save, resume, best, and checks.

A checkpoint holds one copy of the TrainState, saved as global arrays, and a
JSON record: the model and dataset it belongs to, and the eval metrics when it
was taken at an evaluation. Under many processes every process takes part in
each save and restore (Orbax writes a replicated array once, from process 0,
and synchronises the processes); arrays are restored with the sharding of the
target, so a checkpoint written by N processes restores on 1 and vice
versa. The manager keeps the last `keep` checkpoints plus the best by the
selection metric; saves are asynchronous, and `wait()` blocks until the last
one has committed (Orbax writes to a temporary directory and renames it, so
an interrupted save leaves no half-written checkpoint behind).

What goes wrong is told apart: a damaged checkpoint (missing, truncated or
garbled files) is skipped for an older one; an error that does not show
damage (storage that fails to read, memory, a bug) stops with
CheckpointReadError and touches nothing; a write that fails (a full disk)
stops with CheckpointSaveError naming the last complete checkpoint.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import json
import logging
import os
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

Meta = dict[str, Any]
log = logging.getLogger(__name__)


@contextlib.contextmanager
def _without_read_only_notice():
  """Orbax warns 'Given directory is read only' on every read-only open,
  which is what evaluation and inference ask for: drop that one record."""
  from absl import logging as absl_logging

  notice = lambda record: (
    not record.getMessage().startswith(  # noqa: E731
      'Given directory is read only'
    )
  )
  logger = absl_logging.get_absl_logger()
  logger.addFilter(notice)
  try:
    yield
  finally:
    logger.removeFilter(notice)


class CheckpointMismatchError(ValueError):
  """The checkpoint was written for another model or another class count."""


class CheckpointReadError(RuntimeError):
  """A checkpoint could not be read, and the error does not show damage to it
  (storage that fails to read, memory, a bug): nothing is set aside."""


class NoRestorableCheckpointError(RuntimeError):
  """Every checkpoint of a directory is damaged."""


class CheckpointSaveError(RuntimeError):
  """A checkpoint could not be written (a full disk, a failing store)."""


class _Replaced(Exception):
  """A reader's step was replaced by a newer one while it read it."""

  def __init__(self, step: int):
    super().__init__(step)
    self.step = step


# How many times a reader resolves again a checkpoint that a training run
# replaced while it was read, before it gives up.
REREADS = 10


# TensorStore reports a failed read as ValueError('<STATUS>: ...'). These
# statuses are what missing, truncated or garbled files give (measured on
# Orbax 0.12 / TensorStore 0.1: OUT_OF_RANGE for a truncated chunk,
# FAILED_PRECONDITION for a broken compressed stream or JSON, DATA_LOSS for a
# garbled manifest, NOT_FOUND for a deleted one); an operating-system error
# comes as UNAVAILABLE, UNKNOWN, PERMISSION_DENIED or RESOURCE_EXHAUSTED.
DAMAGE_STATUSES = (
  'DATA_LOSS',
  'OUT_OF_RANGE',
  'FAILED_PRECONDITION',
  'NOT_FOUND',
)


# What an operating-system or resource failure looks like inside a status
# message (absl maps several errnos to FAILED_PRECONDITION, a damage status).
FAILURE_STATUSES = (
  'UNAVAILABLE',
  'UNKNOWN',
  'PERMISSION_DENIED',
  'RESOURCE_EXHAUSTED',
  'ABORTED',
  'DEADLINE_EXCEEDED',
  'CANCELLED',
  'INTERNAL',
)
FAILURE_MESSAGES = (
  'Input/output error',
  'Permission denied',
  'Read-only file system',
  'No space left on device',
  'Is a directory',
  'Bad file descriptor',
  'Too many open files',
)


def damage_shown_by(error: BaseException) -> str | None:
  """Why `error` shows that the checkpoint itself is damaged, or None.

  Damage: a missing file, undecodable bytes or JSON, or a TensorStore status
  of DAMAGE_STATUSES, in the chain of causes (Orbax wraps TensorStore's
  errors). A failure anywhere in that chain wins over damage: another OS
  error, memory, a failure status or an OS error's text in a status message.
  Anything else (a TypeError of our own) is not damage either.
  """
  chain, seen = [], set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    chain.append(error)
    error = error.__cause__ or error.__context__
  damage = None
  for link in chain:
    status = str(link).split(':', 1)[0] if type(link) is ValueError else ''
    if (
      isinstance(link, MemoryError)
      or (
        isinstance(link, OSError)
        and not isinstance(link, (FileNotFoundError, NotADirectoryError))
      )
      or status in FAILURE_STATUSES
      or (status and any(m in str(link) for m in FAILURE_MESSAGES))
    ):
      return None
    if damage is None and (
      isinstance(
        link,
        (
          FileNotFoundError,
          NotADirectoryError,
          UnicodeDecodeError,
          json.JSONDecodeError,
        ),
      )
      or status in DAMAGE_STATUSES
    ):
      damage = _reason(link)
  return damage


def _key_name(key) -> str:
  for attr in ('key', 'name', 'idx'):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def _model_shapes(state) -> dict[str, tuple[int, ...]]:
  """'params/denseblock1/.../kernel' -> shape, for params and BN statistics.

  Works on a TrainState, its abstract shape, or Orbax's stored metadata
  (a dict), which name the same leaves differently.
  """
  shapes = {}
  for collection in ('params', 'batch_stats'):
    subtree = (
      getattr(state, collection)
      if hasattr(state, collection)
      else state[collection]
    )
    leaves = jax.tree_util.tree_flatten_with_path(subtree)[0]
    for path, leaf in leaves:
      name = '/'.join([collection] + [_key_name(k) for k in path])
      shapes[name] = tuple(getattr(leaf, 'shape', ()))
  return shapes


def _leaf_paths(tree) -> set[str]:
  """'opt_state/1/trace/...' for every leaf of a state or its stored metadata."""
  return {
    '/'.join(_key_name(k) for k in path)
    for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]
  }


class Checkpoints:
  """The checkpoints of one workdir."""

  def __init__(
    self,
    directory: str,
    *,
    keep: int = 2,
    select_metric: str = 'accuracy',
    read_only: bool = False,
  ):
    """`read_only` (evaluation, inference) never writes, moves or cleans up,
    so it is safe beside a training run on the same directory."""
    self.directory = os.path.abspath(directory)
    self.read_only = read_only
    self._in_flight = None  # the step of the save being written
    self._save_failed = False
    self.select_metric = select_metric
    policy = ocp.checkpoint_managers.AnyPreservationPolicy(
      [
        ocp.checkpoint_managers.LatestN(n=keep),
        ocp.checkpoint_managers.BestN(
          get_metric_fn=lambda metrics: metrics[select_metric],
          reverse=False,
          n=1,
          keep_checkpoints_without_metrics=False,
        ),
      ]
    )
    with _without_read_only_notice():
      self._manager = _listing_retried(
        lambda: self._open_manager(policy, read_only)
      )

  def _open_manager(self, policy, read_only: bool) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(
      self.directory,
      options=ocp.CheckpointManagerOptions(
        create=not read_only,
        read_only=read_only,
        # Nothing is saved read-only; Orbax warns when this is not 0.
        save_interval_steps=0 if read_only else 1,
        preservation_policy=policy,
        enable_async_checkpointing=True,
        # Saves cut short (a killed process) leave *.orbax-checkpoint-tmp*
        # directories; they never count as checkpoints and go at start.
        cleanup_tmp_directories=not read_only,
      ),
      item_handlers={
        'state': ocp.StandardCheckpointHandler(),
        'meta': ocp.JsonCheckpointHandler(),
      },
    )

  # --- which steps ---------------------------------------------------------------

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def best_step(self) -> int | None:
    """The retained step with the highest selection metric (None if none has
    one). A reader whose listing went stale (a training run deleted a step
    while its record was read) lists the steps again, so the best is never
    missed for a step that replaced it."""
    for _ in range(REREADS):
      scored, vanished = self._scored_steps()
      if not vanished:
        break
      _listing_retried(self._manager.reload)
    return max(scored)[1] if scored else None

  def _scored_steps(self) -> tuple[list[tuple[float, int]], bool]:
    """[(selection metric, step)] of the listed steps that have one, and
    whether a listed step was deleted while it was read."""
    scored, vanished = [], False
    for step in self.all_steps():
      try:
        metrics = self.meta(step).get('eval_metrics') or {}
      except Exception as e:  # noqa: BLE001 - a damaged record is never best
        if self.read_only and self._deleted(step):
          log.info('Checkpoint %d was deleted while its record was read', step)
          vanished = True
          continue
        if damage_shown_by(e) is None:
          raise CheckpointReadError(
            f'The record of checkpoint {step} in {self.directory} could not '
            f'be read: {_reason(e)}'
          ) from e
        log.warning(
          'Checkpoint %d in %s: its record is damaged (%s)',
          step,
          self.directory,
          _reason(e),
        )
        continue
      if self.select_metric in metrics:
        scored.append((metrics[self.select_metric], step))
    return scored, vanished

  def resolve(self, which: str | int) -> int:
    """'latest', 'best' or a step number -> a step that exists."""
    steps = self.all_steps()
    if not steps:
      raise FileNotFoundError(f'No checkpoints in {self.directory}')
    if which == 'latest':
      return self.latest_step()
    if which == 'best':
      best = self.best_step()
      if best is None:
        raise FileNotFoundError(
          f'No checkpoint in {self.directory} has eval metrics to pick the '
          f'best from; steps: {steps}'
        )
      return best
    step = int(which)
    if step not in steps:
      raise FileNotFoundError(
        f'No checkpoint for step {step} in {self.directory}; steps: {steps}'
      )
    return step

  def restore_committed(
    self, which: str | int, restore: Callable[[int], Any]
  ) -> tuple[int, Any]:
    """(step, restore(step)) for `which`: 'latest', 'best' or a step.

    For a reader (evaluation, inference) beside a training run: Orbax
    commits a step by renaming its temporary directory, so only whole steps
    are listed, but the run deletes older steps as it saves newer ones (all
    but the last `keep` and the best), maybe while the reader reads one. A
    read that fails once a newer checkpoint exists ('latest') or another
    step is best ('best') is that deletion, not damage: `which` is resolved
    again. 'latest' skips damaged checkpoints for older ones, as
    `newest_restorable` does, setting nothing aside. Every process of a
    run calls this together.
    """
    for _ in range(REREADS):
      try:
        if which == 'latest':
          self.resolve('latest')  # raises when there is none
          return self.newest_restorable(restore, set_aside=False)
        return self._restore_resolved(which, restore)
      except _Replaced as e:
        log.info(
          'Checkpoint %d in %s was deleted while it was read: a training run '
          'saved a newer one. Reading %s again.',
          e.step,
          self.directory,
          which,
        )
    raise CheckpointReadError(
      f'The {which} checkpoint in {self.directory} was replaced {REREADS} '
      f'times while it was read: a training run saves faster than it can '
      f'be read. Ask for a step it keeps, or read after the run.'
    )

  def _restore_resolved(self, which: str | int, restore) -> tuple[int, Any]:
    step = self.resolve(which)
    if _max_over_processes(step) != -_max_over_processes(-step):
      raise _Replaced(step)  # processes listed at different times: again
    try:
      result, error = restore(step), None
    except CheckpointMismatchError:
      raise
    except Exception as e:  # noqa: BLE001 - raised below unless replaced
      result, error = None, e
    if not _max_over_processes(int(error is not None)):
      return step, result
    if which == 'best' and self._moved_on(lambda: self.resolve('best') != step):
      raise _Replaced(step)
    if error is None:
      raise CheckpointReadError(
        f'Checkpoint {step} in {self.directory} could not be read on another '
        f'process'
      )
    raise error

  def _deleted(self, step: int, wait_s: float = 2.0) -> bool:
    """Whether `step`'s directory is gone, or goes within `wait_s`: a
    training run deletes a step file by file, then the directory, so a
    read that failed midway is followed by its disappearance (this process
    only)."""
    step_dir = os.path.join(self.directory, str(step))
    deadline = time.monotonic() + wait_s
    while os.path.isdir(step_dir):
      if time.monotonic() >= deadline:
        return False
      time.sleep(0.05)
    return True

  def _moved_on(self, changed: Callable[[], bool]) -> bool:
    """Whether, on a fresh listing, `changed()` on any process (a reader's
    check that a training run saved since it listed the steps)."""
    if not self.read_only:  # the writer: nobody else saves
      return False
    _listing_retried(self._manager.reload)
    try:
      moved = changed()
    except FileNotFoundError:  # the step asked for is gone
      moved = True
    return bool(_max_over_processes(int(moved)))

  def newest_restorable(
    self, restore: Callable[[int], Any], *, set_aside: bool
  ) -> tuple[int, Any] | None:
    """(step, restore(step)) for the newest step that restores; None when
    there is no checkpoint.

    A damaged checkpoint (`find_damage`, or an error that `damage_shown_by`
    recognises) is skipped with a warning naming the step and the reason;
    once an older one restores, `set_aside` moves the damaged newer ones to
    <workdir>/checkpoints_set_aside/ (never deleted) so the next start does
    not trip on them. When every checkpoint is damaged, nothing is moved and
    NoRestorableCheckpointError lists them. Any other error is not damage:
    CheckpointReadError, with nothing moved. A checkpoint of another model
    (CheckpointMismatchError) is raised as it is. Under many processes every
    process calls this, and all reach the same decision for each step (the
    worst outcome of any process).
    """
    if set_aside and self.read_only:
      raise ValueError('A read-only Checkpoints sets nothing aside')
    damaged = []
    listed = sorted(self.all_steps(), reverse=True)
    if self.read_only and listed:  # processes may list at different times
      top = -_max_over_processes(-listed[0])
      listed = [step for step in listed if step <= top]
    for step in listed:
      error, damage = None, None
      try:
        damage = self.find_damage(step)
        result = None if damage else restore(step)
      except CheckpointMismatchError:
        raise
      except Exception as e:  # noqa: BLE001 - classified just below
        error, damage = e, damage_shown_by(e)
      outcome = _max_over_processes(
        _FAILED
        if error is not None and damage is None
        else _DAMAGED
        if damage
        else _RESTORED
      )
      if outcome != _RESTORED and self._moved_on(
        lambda: (self.latest_step() or -1) > listed[0]
      ):
        raise _Replaced(step)
      if outcome == _FAILED:
        reason = _reason(error) if error else 'it failed on another process'
        raise CheckpointReadError(
          f'Checkpoint {step} in {self.directory} could not be read: '
          f'{reason}. That does not show damage to the checkpoint (storage '
          f'that fails to read, memory, or a bug), so nothing was moved or '
          f'rewritten; fix the cause and run the same command again.'
        ) from error
      if outcome == _RESTORED:
        for bad, _ in damaged if set_aside else ():
          log.warning('Checkpoint %d moved to %s', bad, self._set_aside(bad))
        return step, result
      damage = damage or 'it is damaged on another process'
      damaged.append((step, damage))
      log.warning(
        'Checkpoint %d in %s cannot be restored (%s); %s',
        step,
        self.directory,
        damage,
        'trying the previous one',
      )
    if damaged:
      raise NoRestorableCheckpointError(
        f'No checkpoint in {self.directory} can be restored: '
        + '; '.join(f'step {step}: {reason}' for step, reason in damaged)
        + '. Nothing was moved.'
      )
    return None

  def find_damage(self, step: int) -> str | None:
    """What is missing or unreadable in `step`'s directory, before Orbax
    reads it (an empty or half-deleted step directory otherwise fails
    inside Orbax as a KeyError or TypeError, which would look like a bug).
    OS errors other than a missing file propagate: they are not damage."""
    step_dir = os.path.join(self.directory, str(step))
    for item in ('state/_METADATA', 'meta/metadata'):
      path = os.path.join(step_dir, item)
      try:
        with open(path, 'rb') as f:
          json.loads(f.read().decode('utf-8'))
      except (FileNotFoundError, NotADirectoryError):
        return f'{item} is missing'
      except (UnicodeDecodeError, json.JSONDecodeError) as e:
        return f'{item} is not JSON ({type(e).__name__})'
    return None

  def set_all_aside(self, reason: str) -> str | None:
    """Moves every checkpoint to checkpoints_set_aside/<reason>-<UTC time>/
    (a deliberate fresh start); returns that folder, or None if there were
    none. Every process calls this together."""
    steps = self.all_steps()
    if not steps:
      return None
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime(
      '%Y%m%dT%H%M%SZ'
    )
    folder = f'{reason}-{stamp}'
    for step in steps:
      self._set_aside(step, folder)
    return os.path.join(self._set_aside_root(), folder)

  def _set_aside_root(self) -> str:
    return os.path.join(
      os.path.dirname(self.directory), 'checkpoints_set_aside'
    )

  def _set_aside(self, step: int, folder: str = '') -> str:
    """Moves a step's directory out of the manager's sight; returns where."""
    root = os.path.join(self._set_aside_root(), folder)
    target = os.path.join(root, str(step))
    suffix = 1
    while os.path.exists(target):
      target = os.path.join(root, f'{step}-{suffix}')
      suffix += 1
    if jax.process_index() == 0:
      os.makedirs(root, exist_ok=True)
      os.replace(os.path.join(self.directory, str(step)), target)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils

      multihost_utils.sync_global_devices(f'set_aside_{step}')
    self._manager.reload()
    return target

  # --- save and restore -----------------------------------------------------------

  def save(
    self,
    step: int,
    state,
    meta: Meta,
    eval_metrics: dict[str, float] | None = None,
    force: bool = False,
  ) -> bool:
    """Starts writing `step` in the background. A failed write surfaces as
    CheckpointSaveError here (the previous save's), or at `wait`/`close`."""
    meta = dict(meta, step=step, eval_metrics=eval_metrics)
    saved = False
    with self._save_errors(step):
      saved = self._manager.save(
        step,
        args=ocp.args.Composite(
          state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
        ),
        metrics=eval_metrics,
        force=force,
      )
    if saved:
      self._in_flight = step
      log.info('Saving checkpoint %d to %s', step, self.directory)
    return saved

  @contextlib.contextmanager
  def _save_errors(self, step: int | None = None):
    """Turns a failed background write into CheckpointSaveError naming the
    step that was not saved and the last complete checkpoint."""
    try:
      yield
    except Exception as e:
      if self._save_failed:  # already reported; the run is stopping
        log.warning('Checkpoints in %s: %s', self.directory, _reason(e))
        return
      self._save_failed = True
      unsaved = self._in_flight
      if unsaved is None or self._complete(unsaved):
        unsaved = step
      complete = [s for s in self._complete_steps() if s != unsaved]
      full = _disk_full(e)
      raise CheckpointSaveError(
        (
          f'Checkpoint {unsaved} could not be written to {self.directory}: '
          if unsaved is not None
          else f'Writing to {self.directory} failed after the last save: '
        )
        + (
          'the disk is full (No space left on device)'
          if full
          else f'a write failed ({_reason(e)})'
        )
        + '. '
        + (
          f'The last complete checkpoint is step {max(complete)}. '
          if complete
          else 'There is no complete checkpoint yet. '
        )
        + ('Free some space' if full else 'Fix the storage')
        + ' and run the same command to resume from it.'
      ) from e

  def _complete_steps(self) -> list[int]:
    return sorted(
      int(name)
      for name in os.listdir(self.directory)
      if name.isdigit() and self._complete(int(name))
    )

  def _complete(self, step: int) -> bool:
    """Whether Orbax finished `step` (its temporary directory was renamed)."""
    return os.path.isdir(os.path.join(self.directory, str(step)))

  def meta(self, step: int) -> Meta:
    restored = self._manager.restore(
      step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())
    )
    return restored['meta']

  def check_compatible(self, step: int, abstract_state, expected: Meta) -> None:
    """Raises CheckpointMismatchError naming the first parameter that differs."""
    meta = self.meta(step)
    written_for = ', '.join(
      f'{k}={meta[k]!r}' for k in ('model', 'num_classes') if k in meta
    )
    running = ', '.join(
      f'{k}={expected[k]!r}' for k in ('model', 'num_classes') if k in expected
    )
    where = (
      f'Checkpoint {step} in {self.directory} (written for '
      f'{written_for}' + (f'; this run: {running})' if running else ')')
    )
    stored = _model_shapes(self._manager.item_metadata(step)['state'])
    wanted = _model_shapes(abstract_state)
    for name in sorted(set(stored) | set(wanted)):
      if name not in stored:
        raise CheckpointMismatchError(
          f'{where} has no {name}, which the model needs'
        )
      if name not in wanted:
        raise CheckpointMismatchError(
          f'{where} has {name}, which the model does not have'
        )
      if stored[name] != wanted[name]:
        raise CheckpointMismatchError(
          f'{where}: {name} has shape {stored[name]}, the model expects '
          f'{wanted[name]}'
        )
    for key in ('model', 'num_classes'):
      if key in meta and key in expected and meta[key] != expected[key]:
        raise CheckpointMismatchError(f'{where}: {key} differs')

  def restore(self, step: int, abstract_state, expected: Meta | None = None):
    """(state, meta) of `step`, restored into the structure of `abstract_state`.

    A saved state of another layout (the optimizer, the fine-tuning split of
    the params, the EMA or the loss scaling changed) raises CheckpointMismatchError naming the
    differing leaves: it is not damage, and must not be set aside.
    """
    self.check_compatible(step, abstract_state, expected or {})
    stored = _leaf_paths(self._manager.item_metadata(step)['state'])
    wanted = _leaf_paths(abstract_state)
    if stored != wanted:
      only_stored, only_wanted = (
        sorted(stored - wanted),
        sorted(wanted - stored),
      )
      raise CheckpointMismatchError(
        f'Checkpoint {step} in {self.directory} holds a training state of '
        f'another layout, written with other optimizer, fine-tuning, EMA or '
        f'loss-scaling settings ({len(only_stored)} saved leaves this run does not have, '
        f'e.g. {only_stored[:2]}; {len(only_wanted)} it lacks, e.g. '
        f'{only_wanted[:2]}). Resume with the settings it was written with, '
        f'or start a new --workdir (init_from=workdir:... keeps its weights).'
      )
    restored = self._manager.restore(
      step,
      args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state),
        meta=ocp.args.JsonRestore(),
      ),
    )
    log.info('Restored checkpoint %d from %s', step, self.directory)
    return restored['state'], restored['meta']

  def read(
    self, step: int, sharding: jax.sharding.Sharding | None = None
  ) -> dict:
    """The stored state of `step` as a dict tree, with nothing built to match.

    Read into the structure Orbax recorded and placed with `sharding`
    (default: replicated over all devices, which works on any number of
    processes). Every process of a run must call this together.
    """
    if sharding is None:
      sharding = jax.sharding.NamedSharding(
        jax.sharding.Mesh(np.array(jax.devices()), ('devices',)),
        jax.sharding.PartitionSpec(),
      )
    target = jax.tree_util.tree_map(
      lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding),
      self._manager.item_metadata(step)['state'],
    )
    return self._manager.restore(
      step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target))
    )['state']

  def restore_variables(
    self,
    step: int,
    abstract_variables,
    expected: Meta,
    sharding: jax.sharding.Sharding | None = None,
    ema: bool = False,
  ) -> dict:
    """{'params', 'batch_stats'} of `step`, without building an optimizer.

    The whole stored state is read (`read`); the optimizer state is small
    beside the activations of any use of a model. With `ema`, the EMA of
    the weights that the state keeps.
    """
    self.check_compatible(step, abstract_variables, expected)
    restored = self.read(step, sharding)
    if ema:
      if not restored.get('ema'):
        raise CheckpointMismatchError(
          f'Checkpoint {step} in {self.directory} holds no EMA weights'
        )
      restored = restored['ema']
    log.info(
      'Restored the variables of checkpoint %d from %s', step, self.directory
    )
    return {
      'params': restored['params'],
      'batch_stats': restored['batch_stats'],
    }

  def wait(self) -> None:
    with self._save_errors():
      self._manager.wait_until_finished()

  def close(self) -> None:
    with self._save_errors():
      self._manager.wait_until_finished()
    with self._save_errors():
      self._manager.close()


def _listing_retried(list_steps: Callable[[], Any]) -> Any:
  """`list_steps()` (Orbax listing the step directories), again when a step
  is deleted while listed (a training run beside a reader)."""
  for _ in range(REREADS - 1):
    try:
      return list_steps()
    except FileNotFoundError:
      continue
  return list_steps()


def _disk_full(error: BaseException) -> bool:
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if (
      isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)
    ) or ('RESOURCE_EXHAUSTED' in str(error) and 'No space' in str(error)):
      return True
    error = error.__cause__ or error.__context__
  return False


def _reason(error: Exception) -> str:
  text = str(error).strip().splitlines()
  return f'{type(error).__name__}: {text[0] if text else ""}'[:300]


_RESTORED, _DAMAGED, _FAILED = 0, 1, 2  # worse outcomes are larger


def _max_over_processes(value: int) -> int:
  """The largest `value` of all processes (its own in one process): the
  worst outcome, a flag any process raised."""
  if jax.process_count() == 1:
    return value
  from jax.experimental import multihost_utils

  return int(
    np.asarray(
      multihost_utils.process_allgather(np.array(value, np.int32))
    ).max()
  )
