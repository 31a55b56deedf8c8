"""Orbax checkpoints of the train state: save, resume, best, and checks.

A checkpoint holds one copy of the TrainState, saved as global arrays, and a
JSON record: the model and dataset it belongs to, and the eval metrics when it
was taken at an evaluation. Under many processes every process takes part in
each save and restore (Orbax writes a replicated array once, from process 0,
and synchronises the processes); arrays are restored with the sharding of the
target, so a checkpoint written by N processes restores on 1 and vice versa. The manager keeps the last `keep` checkpoints plus the
best by the selection metric; saves are asynchronous, and `wait()` blocks until
the last one has committed (Orbax writes to a temporary directory and renames
it, so an interrupted save leaves no half-written checkpoint behind).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

Meta = dict[str, Any]
log = logging.getLogger(__name__)


class CheckpointMismatchError(ValueError):
  """The checkpoint was written for another model or another class count."""


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
    subtree = (getattr(state, collection) if hasattr(state, collection)
               else state[collection])
    leaves = jax.tree_util.tree_flatten_with_path(subtree)[0]
    for path, leaf in leaves:
      name = '/'.join([collection] + [_key_name(k) for k in path])
      shapes[name] = tuple(getattr(leaf, 'shape', ()))
  return shapes


def _leaf_paths(tree) -> set[str]:
  """'opt_state/1/trace/...' for every leaf of a state or its stored metadata."""
  return {'/'.join(_key_name(k) for k in path)
          for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]}


class Checkpoints:
  """The checkpoints of one workdir."""

  def __init__(self, directory: str, *, keep: int = 2,
               select_metric: str = 'accuracy', read_only: bool = False):
    """`read_only` (evaluation, inference) never writes, moves or cleans up,
    so it is safe beside a training run on the same directory."""
    self.directory = os.path.abspath(directory)
    self.read_only = read_only
    self.select_metric = select_metric
    policy = ocp.checkpoint_managers.AnyPreservationPolicy([
        ocp.checkpoint_managers.LatestN(n=keep),
        ocp.checkpoint_managers.BestN(
            get_metric_fn=lambda metrics: metrics[select_metric],
            reverse=False, n=1, keep_checkpoints_without_metrics=False),
    ])
    self._manager = ocp.CheckpointManager(
        self.directory, options=ocp.CheckpointManagerOptions(
            create=not read_only, read_only=read_only,
            preservation_policy=policy, enable_async_checkpointing=True,
            # Saves cut short (a killed process) leave *.orbax-checkpoint-tmp*
            # directories; they never count as checkpoints and go at start.
            cleanup_tmp_directories=not read_only),
        item_handlers={'state': ocp.StandardCheckpointHandler(),
                       'meta': ocp.JsonCheckpointHandler()})

  # --- which steps ---------------------------------------------------------------

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def best_step(self) -> int | None:
    """The retained step with the highest selection metric (None if none has one)."""
    scored = []
    for step in self.all_steps():
      try:
        metrics = self.meta(step).get('eval_metrics') or {}
      except Exception as e:  # an unreadable record is never the best
        log.warning('Checkpoint %d in %s: its record cannot be read (%s)',
                    step, self.directory, _reason(e))
        continue
      if self.select_metric in metrics:
        scored.append((metrics[self.select_metric], step))
    return max(scored)[1] if scored else None

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
            f'best from; steps: {steps}')
      return best
    step = int(which)
    if step not in steps:
      raise FileNotFoundError(
          f'No checkpoint for step {step} in {self.directory}; steps: {steps}')
    return step

  def newest_restorable(self, restore: Callable[[int], Any], *,
                        set_aside: bool) -> tuple[int, Any] | None:
    """(step, restore(step)) for the newest step that restores, or None.

    A checkpoint that fails to restore (unreadable, truncated, a broken
    record) is skipped with a warning naming the step and the reason; with
    `set_aside`, it is also moved to <workdir>/checkpoints_set_aside/ (never
    deleted) so the next start does not trip on it. A checkpoint of another
    model (CheckpointMismatchError) is not damage: that error is raised.
    Under many processes every process calls this, and they agree on each
    step's outcome.
    """
    if set_aside and self.read_only:
      raise ValueError('A read-only Checkpoints sets nothing aside')
    for step in sorted(self.all_steps(), reverse=True):
      try:
        result, error = restore(step), None
      except CheckpointMismatchError:
        raise
      except Exception as e:  # noqa: BLE001 - any damage means "try older"
        result, error = None, e
      if not _any_process(error is not None):
        return step, result
      reason = _reason(error) if error else 'it failed on another process'
      if set_aside:
        moved = self._set_aside(step)
        log.warning('Checkpoint %d in %s cannot be restored (%s); moved to '
                    '%s, falling back to the previous one', step,
                    self.directory, reason, moved)
      else:
        log.warning('Checkpoint %d in %s cannot be restored (%s); falling '
                    'back to the previous one', step, self.directory, reason)
    return None

  def _set_aside(self, step: int) -> str:
    """Moves a step's directory out of the manager's sight; returns where."""
    root = os.path.join(os.path.dirname(self.directory),
                        'checkpoints_set_aside')
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

  def save(self, step: int, state, meta: Meta,
           eval_metrics: dict[str, float] | None = None,
           force: bool = False) -> bool:
    meta = dict(meta, step=step, eval_metrics=eval_metrics)
    saved = self._manager.save(
        step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                      meta=ocp.args.JsonSave(meta)),
        metrics=eval_metrics, force=force)
    if saved:
      log.info('Saving checkpoint %d to %s', step, self.directory)
    return saved

  def meta(self, step: int) -> Meta:
    restored = self._manager.restore(
        step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    return restored['meta']

  def check_compatible(self, step: int, abstract_state,
                       expected: Meta) -> None:
    """Raises CheckpointMismatchError naming the first parameter that differs."""
    meta = self.meta(step)
    written_for = ', '.join(f'{k}={meta[k]!r}' for k in ('model', 'num_classes')
                            if k in meta)
    running = ', '.join(f'{k}={expected[k]!r}' for k in ('model', 'num_classes')
                        if k in expected)
    where = (f'Checkpoint {step} in {self.directory} (written for '
             f'{written_for}' + (f'; this run: {running})' if running else ')'))
    stored = _model_shapes(self._manager.item_metadata(step)['state'])
    wanted = _model_shapes(abstract_state)
    for name in sorted(set(stored) | set(wanted)):
      if name not in stored:
        raise CheckpointMismatchError(
            f'{where} has no {name}, which the model needs')
      if name not in wanted:
        raise CheckpointMismatchError(
            f'{where} has {name}, which the model does not have')
      if stored[name] != wanted[name]:
        raise CheckpointMismatchError(
            f'{where}: {name} has shape {stored[name]}, the model expects '
            f'{wanted[name]}')
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
      only_stored, only_wanted = sorted(stored - wanted), sorted(wanted - stored)
      raise CheckpointMismatchError(
          f'Checkpoint {step} in {self.directory} holds a training state of '
          f'another layout, written with other optimizer, fine-tuning, EMA or '
          f'loss-scaling settings ({len(only_stored)} saved leaves this run does not have, '
          f'e.g. {only_stored[:2]}; {len(only_wanted)} it lacks, e.g. '
          f'{only_wanted[:2]}). Resume with the settings it was written with, '
          f'or start a new --workdir (init_from=workdir:... keeps its weights).')
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state),
        meta=ocp.args.JsonRestore()))
    log.info('Restored checkpoint %d from %s', step, self.directory)
    return restored['state'], restored['meta']

  def read(self, step: int,
           sharding: jax.sharding.Sharding | None = None) -> dict:
    """The stored state of `step` as a dict tree, with nothing built to match.

    Read into the structure Orbax recorded and placed with `sharding`
    (default: replicated over all devices, which works on any number of
    processes). Every process of a run must call this together.
    """
    if sharding is None:
      sharding = jax.sharding.NamedSharding(
          jax.sharding.Mesh(np.array(jax.devices()), ('devices',)),
          jax.sharding.PartitionSpec())
    target = jax.tree_util.tree_map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding),
        self._manager.item_metadata(step)['state'])
    return self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target)))['state']

  def restore_variables(self, step: int, abstract_variables, expected: Meta,
                        sharding: jax.sharding.Sharding | None = None,
                        ema: bool = False) -> dict:
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
            f'Checkpoint {step} in {self.directory} holds no EMA weights')
      restored = restored['ema']
    log.info('Restored the variables of checkpoint %d from %s', step,
             self.directory)
    return {'params': restored['params'],
            'batch_stats': restored['batch_stats']}

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def _reason(error: Exception) -> str:
  text = str(error).strip().splitlines()
  return f'{type(error).__name__}: {text[0] if text else ""}'[:300]


def _any_process(flag: bool) -> bool:
  """`flag` OR-ed over all processes (itself in one process)."""
  if jax.process_count() == 1:
    return flag
  from jax.experimental import multihost_utils
  return bool(np.asarray(multihost_utils.process_allgather(
      np.array(flag, np.int32))).any())
