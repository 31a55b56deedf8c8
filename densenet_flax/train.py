"""Training: `train_and_evaluate(config, workdir)` and its command line.

  python -m densenet_flax.train --workdir runs/demo [--config configs/x.py]

One loop for one device (jit), many local devices (pmap) and many processes
(pmap over every process's devices; see parallel.py). Restarting with the same
workdir resumes from the latest checkpoint at the exact step, with the data
continuing where it was. SIGTERM/SIGINT to any process stop every process at
the same step, save one checkpoint and return; a second signal exits at once.
Process 0 writes logs, TensorBoard scalars (workdir/tensorboard),
metrics.jsonl, reports and plots (workdir/reports). One run trains in a
workdir at a time (run_lock.py): a second one exits with code 75.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import os
import signal
import sys
import threading
import time
from typing import Any

import jax
import ml_collections
import numpy as np

from densenet_flax import accelerators
from densenet_flax import checkpointing
from densenet_flax import cli
from densenet_flax import config_checks
from densenet_flax import evaluation
from densenet_flax import layers
from densenet_flax import optim
from densenet_flax import parallel
from densenet_flax import pretrained
from densenet_flax import reporting
from densenet_flax import run_lock
from densenet_flax import steps
from densenet_flax import recipe
from densenet_flax import resume_policy
from densenet_flax import run_directory
from densenet_flax.data import specs

log = logging.getLogger(__name__)


def class_weights(config, data) -> np.ndarray | None:
  """Inverse class frequencies of the training split, mean 1 ('balanced')."""
  if config.class_weighting == 'none':
    return None
  try:
    counts = data.train_label_counts()
  except ValueError as e:
    raise ValueError(f"config.class_weighting='balanced': {e}") from None
  weights = counts.sum() / (data.spec.num_classes * np.maximum(counts, 1))
  log.info('Class weights: %s', np.round(weights, 3).tolist())
  return weights.astype(np.float32)


class _StopRequest:
  """Turns SIGTERM/SIGINT into a flag the loop checks between steps.

  A second signal raises KeyboardInterrupt at once.
  """

  def __init__(self):
    self.signal = None

  def __call__(self, signum, frame):
    del frame
    if self.signal is not None:
      raise KeyboardInterrupt(f'second signal ({signal.Signals(signum).name})')
    self.signal = signal.Signals(signum).name

  @contextlib.contextmanager
  def installed(self):
    if threading.current_thread() is not threading.main_thread():
      yield self
      return
    previous = {
      s: signal.signal(s, self) for s in (signal.SIGTERM, signal.SIGINT)
    }
    try:
      yield self
    finally:
      for s, handler in previous.items():
        signal.signal(s, handler)


class _MetricBuffer:
  """Per-step metrics kept on device until a log point fetches them at once.

  The clock runs from the last flush, or from `restart_clock`: the loop
  restarts it after the run's first step, which compiles (or loads) the train
  step, so that the first window's images/second counts only the steps after,
  and the first step's seconds are reported apart.
  """

  def __init__(self):
    self.first_step = None
    self.items = []
    self.untimed = 0
    self.untimed_seconds = None
    self.start_time = time.perf_counter()

  def add(self, step: int, metrics) -> None:
    if self.first_step is None:
      self.first_step = step
    self.items.append(metrics)

  def restart_clock(self, untimed_seconds: float) -> None:
    """Time from now on, leaving the steps added so far out of `seconds`;
    the next flush reports the `untimed_seconds` they took."""
    self.untimed = len(self.items)
    self.untimed_seconds = untimed_seconds
    self.start_time = time.perf_counter()

  def flush(self, first_replica) -> dict[str, np.ndarray] | None:
    """Stacked host metrics since the last flush.

    Raises FloatingPointError naming the first step whose loss, params or BN
    statistics are not finite. The loop flushes before every save, so such a
    state is never saved. A step that a dynamic loss scale skipped because
    its scaled gradients overflowed has a finite loss and unchanged weights,
    so it passes; a loss that is not finite is divergence at any scale.
    """
    if not self.items:
      return None
    fetched = jax.device_get([first_replica(m) for m in self.items])
    stacked = {k: np.array([m[k] for m in fetched]) for k in fetched[0]}
    bad = np.flatnonzero(
      ~np.isfinite(stacked['loss']) | (stacked['finite'] == 0)
    )
    if bad.size:
      i = int(bad[0])
      loss = stacked['loss'][i]
      what = (
        f'Loss is {loss}'
        if not np.isfinite(loss)
        else f'Parameters or BN statistics are not finite (loss {loss:.4g})'
      )
      raise FloatingPointError(
        f'{what} at step {self.first_step + i + 1}; training stopped and '
        f'that state was not saved'
      )
    stacked['seconds'] = time.perf_counter() - self.start_time
    stacked['timed_steps'] = len(self.items) - self.untimed
    if self.untimed_seconds is not None:
      stacked['untimed_seconds'] = self.untimed_seconds
    self.first_step, self.items, self.untimed = None, [], 0
    self.untimed_seconds = None
    self.start_time = time.perf_counter()
    return stacked


@dataclasses.dataclass
class _Run:
  """What one training run is built from; `_build_run` makes it."""

  config: ml_collections.ConfigDict
  workdir: str
  dp: parallel.DataParallel
  data: Any  # pipeline.InputPipeline
  model: Any
  tx: Any
  schedule: Any
  train_step: Any  # compiled steps.train_step
  eval_step: Any  # compiled steps.eval_step
  ckpts: checkpointing.Checkpoints
  writer: reporting.MetricWriter
  identity: dict
  steps_per_epoch: int
  total_steps: int
  is_writer: bool
  progress: Any = None
  last_saved: int | None = None
  last_eval: dict = dataclasses.field(default_factory=dict)

  def save(self, state, step: int, eval_metrics=None) -> None:
    """Every process takes part; Orbax writes the global copy asynchronously."""
    meta = dict(self.identity, config=json.loads(self.config.to_json()))
    self.ckpts.save(
      step,
      self.dp.global_copy(state),
      meta,
      eval_metrics=eval_metrics,
      force=True,
    )
    self.last_saved = step

  def evaluate(
    self, state, split: str, tta: str | None = None, *, raw: bool = False
  ) -> dict:
    """A report on `split` of the run's model: the EMA weights where the run
    keeps them (unless `raw`), else the trained weights."""
    if recipe.uses_ema(self.config) and not raw:
      state = state.ema_model()
    return evaluation.evaluate_split(
      self.eval_step, state, self.data, split, self.dp, tta=tta
    )

  def say(self, message: str) -> None:
    """A line for the person watching: above the progress bar, or logged."""
    if self.progress is not None:
      self.progress.write(message)
    else:
      log.info(message)

  def close(self) -> None:
    """Finishes the in-flight save and closes the writers, even after an error."""
    if self.progress is not None:
      self.progress.close()
    try:
      self.ckpts.close()
    finally:
      self.writer.close()


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains, evaluates every `eval_every_epochs`, checkpoints, and reports.

  Under many processes every process calls this with the same config.

  Args:
    config: the run's config (configs/*.py); checked by
      `config_checks.validate` before anything starts.
    workdir: the run's directory for checkpoints, logs and reports, created
      if missing; one with checkpoints resumes from the newest that restores
      (unless config.restart).

  Returns:
    A summary dict: 'step' (the step reached), 'total_steps', 'eval' (the
    last evaluation's accuracy, balanced_accuracy, macro_f1 and loss in
    this call; {} if none
    ran), 'interrupted' (None, or why training stopped early: a signal's
    name, 'a stop signal to another process' or 'stop_after_steps'),
    'workdir' (absolute), 'checkpoints' (their directory), and, when
    config.test_split is set and the run was not interrupted, 'test' (the
    test split's `evaluation.evaluate_split` report: on the best checkpoint
    by the selection split (config.eval_split, or with select_on='test' the
    test split itself), else on the last state; its 'selection' says which).

  Raises:
    ValueError: an invalid config, or batch sizes that do not divide over
      the devices.
    FloatingPointError: the loss, params or BN statistics stopped being
      finite; that state is not saved.
    workdir.ConfigChangeError: a resume with a config that changes the
      result, unless config.allow_config_change.
    checkpointing.NoRestorableCheckpointError: every checkpoint is damaged
      (config.restart=True starts from step 0).
    run_lock.WorkdirLockedError: another run holds the workdir (after
      config.wait_for_lock_s); nothing was written to it.
  """
  config_checks.validate(config)  # before anything starts, on any process
  # The source's BN epsilon (a resume reads it from its own config.json).
  config = pretrained.resolve_config(config, workdir)
  # Class folders: their classes, which config.json keeps for inference.
  config = specs.record_class_names(config)
  if config.distributed:
    parallel.initialize(
      config.coordinator_address,
      config.num_processes,
      config.process_id,
      config.distributed_timeout_s,
    )
  dp = parallel.DataParallel(parallelism=config.parallelism)
  accelerators.log_backend()
  config_checks.validate_devices(config, dp.num_devices)
  accelerators.enable_compilation_cache(config)
  # One writer per workdir: held from before anything is written to the end.
  with run_lock.hold(os.path.abspath(workdir), config):
    run = _build_run(config, os.path.abspath(workdir), dp)
    try:
      state, start_step = _restore_or_init(run)
      state, interrupted = _train(run, state, start_step)
      step = int(jax.device_get(dp.first_replica(state).step))
      summary = {
        'step': step,
        'total_steps': run.total_steps,
        'eval': run.last_eval,
        'interrupted': interrupted,
        'workdir': run.workdir,
        'checkpoints': run.ckpts.directory,
      }
      if not interrupted and config.test_split:
        summary['test'] = _final_test(run, state, step)
      if run.is_writer:
        _plot_curves(run)
    except Exception as e:
      if dp.num_processes > 1:
        log.error(
          'Process %d of %d stopped: %s. If another process died, its '
          'log says why; rerun the same command on every process to '
          'resume from the last checkpoint.',
          jax.process_index(),
          dp.num_processes,
          e,
        )
      raise
    finally:
      run.close()
  return summary


def compile_train_step(
  config,
  dp: parallel.DataParallel,
  num_classes: int,
  class_weights: np.ndarray | None = None,
) -> parallel.CompiledStep:
  """The run's train step over `dp`'s devices, its state donated.

  One definition for the run and for benchmarks.tpu_compile, which compiles
  it for accelerators the host does not have.
  """
  return dp.compile(
    functools.partial(
      steps.train_step,
      num_classes=num_classes,
      axis_name=dp.axis_name,
      label_smoothing=config.label_smoothing,
      mixup_alpha=config.mixup_alpha,
      class_weights=class_weights,
      frozen=optim.frozen_stages(config),
      ema_decay=config.ema_decay,
      label_mode=config.label_mode,
    ),
    donate_state=True,
  )


def state_factory(config, model, tx, backend: str | None = None):
  """`make_state(variables=None)`: the run's fresh train state (its seed's
  init key, EMA and loss scale as configured); `jax.eval_shape` of it is
  the state's shapes. `backend` decides 'auto' loss scaling (default: JAX's).
  """
  return functools.partial(
    steps.create_train_state,
    run_keys(config)[0],
    model,
    tx,
    recipe.input_shape(config),
    use_dynamic_scale=recipe.dynamic_loss_scaling(config, backend),
    ema=recipe.uses_ema(config),
  )


def _build_run(config, workdir: str, dp: parallel.DataParallel) -> _Run:
  """Data, model, optimizer, compiled steps, checkpoints and writers."""
  is_writer = jax.process_index() == 0
  os.makedirs(workdir, exist_ok=True)
  if is_writer:
    os.makedirs(os.path.join(workdir, 'reports'), exist_ok=True)

  from densenet_flax.data import pipeline  # TensorFlow loads only here

  data = pipeline.InputPipeline(config, num_devices=dp.num_local_devices)
  if is_writer:  # what inference and export normalise with
    run_directory.save_normalization(workdir, data.mean, data.std)
  model = recipe.build_model(config, dp.axis_name)
  steps_per_epoch = data.steps_per_epoch
  tx, schedule = optim.create_optimizer(config, steps_per_epoch)
  train_step = compile_train_step(
    config, dp, data.spec.num_classes, class_weights(config, data)
  )
  return _Run(
    config=config,
    workdir=workdir,
    dp=dp,
    data=data,
    model=model,
    tx=tx,
    schedule=schedule,
    train_step=train_step,
    eval_step=dp.compile(steps.eval_step, per_example_output=True),
    ckpts=run_directory.open_checkpoints(config, workdir),
    writer=reporting.MetricWriter(workdir, enabled=is_writer),
    identity=recipe.identity(config),
    steps_per_epoch=steps_per_epoch,
    total_steps=int(config.num_epochs * steps_per_epoch),
    is_writer=is_writer,
  )


def _restore_or_init(run: _Run):
  """(replicated state, first step): the newest checkpoint that restores, or a
  fresh start. A resume with a config that changes the result is refused
  (config.allow_config_change lets it through, recorded in metrics.jsonl).
  A workdir whose checkpoints are all damaged stops the run, unless
  config.restart asks for step 0. History past the first step moves to a
  side file (reporting.MetricWriter.supersede_after), never deleted.
  """
  config, dp = run.config, run.dp
  make_state = state_factory(config, run.model, run.tx)
  abstract = dp.abstract_global(jax.eval_shape(make_state))

  def restore(step):
    # The configs first: a refused change must not read as a damaged
    # checkpoint (those are set aside), whatever it does to the state.
    changes = _config_changes(run, run.ckpts.meta(step), step)
    state, _ = run.ckpts.restore(step, abstract, run.identity)
    return state, changes

  restart = config.restart and not _restarted_here(run)
  if restart:
    found = None
    moved = run.ckpts.set_all_aside('restart')
    if moved:
      log.warning(
        'config.restart: starting from step 0; the checkpoints '
        'there were moved to %s',
        moved,
      )
  else:
    try:
      found = run.ckpts.newest_restorable(restore, set_aside=True)
    except checkpointing.NoRestorableCheckpointError as e:
      raise checkpointing.NoRestorableCheckpointError(
        f'{e} Training does not start again over them: pass '
        f'--config.restart=True to start from step 0 (they move to '
        f'checkpoints_set_aside/, as the history does to a side file).'
      ) from None
  if found is None:
    state, start_step, changes = _fresh_state(run, make_state), 0, {}
  else:
    step, (state, changes) = found
    start_step = int(np.asarray(parallel.local_value(state.step)))
    log.info(
      'Resuming at step %d of %d from %s',
      start_step,
      run.total_steps,
      run.ckpts.directory,
    )
    run.last_saved = start_step
  if run.is_writer:
    run_directory.save_config(config, run.workdir)
  run.writer.supersede_after(start_step)
  if changes:
    run.writer.record(
      start_step,
      config_change={key: [old, new] for key, (old, new) in changes.items()},
    )
  return dp.put_replicated(state), start_step


def _restarted_here(run: _Run) -> bool:
  """Whether the newest checkpoint was written by a run that had already
  restarted: a rerun of the same command line (a requeued job, a resume
  after a full disk) then resumes it instead of restarting again."""
  latest = run.ckpts.latest_step()
  if latest is None:
    return False
  try:
    written_by = run.ckpts.meta(latest).get('config', {})
  except Exception:  # noqa: BLE001 - unreadable: the restart moves it aside
    return False
  if not written_by.get('restart'):
    return False
  log.warning(
    'config.restart: checkpoint %d was written after this run restarted; '
    'resuming from it (to restart again, drop --config.restart=True, '
    'move %s aside by hand, and rerun)',
    latest,
    run.ckpts.directory,
  )
  return True


def _fresh_state(run: _Run, make_state):
  """A new state, from `config.init_from`'s weights where it names some."""
  sharding = run.dp.replicated if run.dp.num_processes > 1 else None
  variables = pretrained.initial_variables(run.config, sharding=sharding)
  try:
    return make_state(variables=variables)
  except ValueError as e:
    if variables is None:
      raise
    raise ValueError(
      f'{pretrained.source_of(run.config)} does not fit '
      f'config.model={run.config.model!r} with '
      f'model_overrides={run.config.model_overrides.to_dict()}'
      f': {e}'
    ) from None


def _config_changes(run: _Run, meta: dict, step: int) -> dict:
  """What differs from the checkpoint's config; raises unless allowed."""
  if 'config' not in meta:
    log.info(
      'Checkpoint %d records no config (an older version wrote it); '
      'resuming without comparing configs',
      step,
    )
    return {}
  changes = resume_policy.config_changes(meta['config'], run.config)
  if changes:
    listing = '; '.join(
      f'{key}: {old!r} -> {new!r}' for key, (old, new) in changes.items()
    )
    if not run.config.allow_config_change:
      raise resume_policy.ConfigChangeError(
        f'{run.workdir} was trained to step {step} with another config, and '
        f'these changes alter the result (data order, schedule, model): '
        f'{listing}. Use a new --workdir, put the values back, or pass '
        f'--config.allow_config_change=True to resume with them anyway.'
      )
    log.warning(
      'Resuming at step %d with a changed config (allowed): %s', step, listing
    )
  return changes


def run_keys(config):
  """(init key, step key) of the run's seed, of PRNG `config.rng_impl`."""
  return jax.random.split(jax.random.key(config.seed, impl=config.rng_impl))


def _train(run: _Run, state, start_step: int):
  """Steps from `start_step` to the end, or to a stop; (state, stop reason)."""
  config, dp = run.config, run.dp
  step_rng = dp.put_broadcast(run_keys(config)[1])
  batches = parallel.prefetch(run.data.train_batches(start_step), dp.put_batch)
  # On CPU, tf.data and XLA share the cores: letting the next batch be made
  # while a step runs asynchronously oversubscribes them and slows the step
  # (docs/benchmarks.md#what-the-steps-design-rests-on). There, wait for
  # each step.
  sync_each_step = jax.default_backend() == 'cpu'
  buffer = _MetricBuffer()
  stop_at = (
    start_step + config.stop_after_steps if config.stop_after_steps else None
  )
  run.progress = _progress(config, run.is_writer, start_step, run.total_steps)
  log.info(
    'Training %s on %s: %d steps (%d epochs x %d), %d device(s) in %d '
    'process(es), batch %d; workdir %s',
    config.model,
    config.dataset,
    run.total_steps,
    config.num_epochs,
    run.steps_per_epoch,
    dp.num_devices,
    dp.num_processes,
    config.batch_size,
    run.workdir,
  )
  log.info(
    'Kernels: %s (%s=%s); compute dtype %s; loss scaling %s',
    layers.kernel_set(),
    layers.KERNELS_ENV,
    layers.kernel_choice(),
    recipe.compute_dtype(config).dtype.name,
    'dynamic' if state.dynamic_scale is not None else 'none',
  )

  def log_train(step):
    stacked = buffer.flush(dp.first_replica)
    if stacked is None:
      return
    scalars = {
      'train/loss': float(stacked['loss'].mean()),
      'train/accuracy': float(stacked['accuracy'].mean()),
      'train/learning_rate': float(run.schedule(step - 1)),
    }
    if stacked['timed_steps']:
      scalars['train/images_per_second'] = (
        stacked['timed_steps'] * config.batch_size / stacked['seconds']
      )
    if 'untimed_seconds' in stacked:  # the run's first step
      scalars['train/first_step_seconds'] = stacked['untimed_seconds']
    if 'loss_scale' in stacked:  # dynamic loss scaling
      scalars['train/loss_scale'] = float(stacked['loss_scale'][-1])
      scalars['train/skipped_steps'] = float(
        np.sum(stacked['grads_finite'] == 0)
      )
    run.writer.write(step, scalars)
    if run.progress is not None:
      run.progress.set_postfix(
        loss=f'{scalars["train/loss"]:.4f}',
        acc=f'{scalars["train/accuracy"]:.4f}',
        img_s=f'{scalars["train/images_per_second"]:.0f}',
      )

  # Every process stops at the same step: after each step it reads the OR of
  # all processes' stop flags as they stood one step earlier (the collective
  # runs while the next step does).
  signalled = lambda: False  # noqa: E731
  stop = None
  with _StopRequest().installed() as signals:
    for step in range(start_step, run.total_steps):
      with jax.transfer_guard('disallow'):
        batch = next(batches)
        started = time.perf_counter()
        state, metrics = run.train_step(state, batch, step_rng)
      if sync_each_step or step == start_step:
        jax.block_until_ready(metrics)
      done = step + 1
      buffer.add(step, metrics)
      if step == start_step:
        seconds = time.perf_counter() - started
        buffer.restart_clock(seconds)
        log.info(
          'First step done in %.1f s, compiling the train step or '
          'loading it from the compilation cache (%s)',
          seconds,
          config.get('compilation_cache_dir') or 'off',
        )
      if run.progress is not None:
        run.progress.update(1)
      if signalled():
        stop = signals.signal or 'a stop signal to another process'
      elif done == stop_at and done < run.total_steps:
        stop = 'stop_after_steps'
      else:
        signalled = dp.any_process(signals.signal is not None)
        if sync_each_step:  # on CPU, no collective overlaps the next step's
          signalled()
      if stop:  # save first: a preempted job may have seconds left
        log_train(done)  # raises on NaN/Inf before anything is saved
        if run.last_saved != done:
          run.save(state, done)
        run.say(
          f'{stop} at step {done}: checkpoint saved to '
          f'{run.ckpts.directory}; run the same command to resume.'
        )
        break
      _log_evaluate_save(run, state, done, log_train)
  return state, stop


def _log_evaluate_save(run: _Run, state, done: int, log_train) -> None:
  """What happens after step `done`: logs, the epoch's evaluation, a save."""
  config = run.config
  epoch, within = divmod(done, run.steps_per_epoch)
  last = done == run.total_steps
  evaluate_now = within == 0 and (epoch % config.eval_every_epochs == 0 or last)
  checkpoint_now = done % config.checkpoint_every_steps == 0 or last
  if done % config.log_every_steps == 0 or evaluate_now or checkpoint_now:
    log_train(done)  # raises on NaN/Inf before anything is saved
  if evaluate_now:
    split = recipe.selection_split(config)
    report = run.evaluate(state, split)
    metrics = {
      'accuracy': report['accuracy'],
      'balanced_accuracy': report['balanced_accuracy'],
      'macro_f1': report['macro_f1'],
      'loss': report['loss'],
    }
    scalars = {f'eval/{k}': v for k, v in metrics.items()}
    if recipe.uses_ema(config):  # the EMA is evaluated; the raw weights too
      raw = run.evaluate(state, split, raw=True)
      scalars.update({f'eval/raw_{k}': raw[k] for k in metrics})
    run.writer.write(done, scalars)
    run.last_eval = metrics
    weights = ' (EMA weights)' if recipe.uses_ema(config) else ''
    run.say(
      f'epoch {epoch} (step {done}): {split} accuracy '
      f'{report["accuracy"]:.4f}, balanced {report["balanced_accuracy"]:.4f}'
      f', macro-F1 {report["macro_f1"]:.4f}, loss {report["loss"]:.4f}'
      f'{weights}'
    )
    run.save(state, done, eval_metrics=metrics)
  elif checkpoint_now:
    run.save(state, done)


def _final_test(run: _Run, state, last_step: int) -> dict:
  """The test split on the best checkpoint by the selection split (else the
  last state), once. Its report says how the checkpoint was chosen."""
  config, dp = run.config, run.dp
  run.ckpts.wait()
  selected_on = recipe.selection_split(config)
  tested_step = last_step
  best = None if config.select_on == 'last' else run.ckpts.best_step()
  if best is not None:
    tested_step = best
    if best != last_step:
      abstract = dp.abstract_global(state)
      restored, _ = run.ckpts.restore(best, abstract, run.identity)
      state = dp.put_replicated(restored)
  tta = config.test_tta or None
  report = run.evaluate(state, config.test_split, tta=tta)
  report['selection'] = evaluation.selection_record(
    config, config.test_split, 'best' if best is not None else 'last'
  )
  skipped = run.data.skipped_images()
  if skipped:
    report['skipped_images'] = skipped
  if run.is_writer:
    paths = evaluation.write_report(
      report, run.workdir, config.test_split, tested_step, tta=tta
    )
    note = (
      f'; the checkpoint was selected on {selected_on} itself'
      if report['selection']['test_used_for_selection']
      else ''
    )
    run.say(
      f'{config.test_split} (step {tested_step}'
      f'{", " + config.test_tta if config.test_tta else ""}): accuracy '
      f'{report["accuracy"]:.4f}, balanced {report["balanced_accuracy"]:.4f}'
      f', macro-F1 {report["macro_f1"]:.4f}{note}; report {paths[0]}'
    )
  return report


def _plot_curves(run: _Run) -> None:
  if os.path.exists(run.writer.history_path):
    path = reporting.plot_training_curves(
      reporting.read_history(run.writer.history_path),
      os.path.join(run.workdir, 'reports', 'training_curves.png'),
    )
    log.info('Training curves: %s', path)


def _progress(config, enabled, start, total):
  if not (enabled and config.progress_bar):
    return None
  from tqdm import tqdm

  return tqdm(total=total, initial=start, unit='step', dynamic_ncols=True)


# --- command line ---------------------------------------------------------------


def default_config_path() -> str:
  """configs/default.py of this checkout (or of the current directory)."""
  here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  for root in (os.getcwd(), here):
    path = os.path.join(root, 'configs', 'default.py')
    if os.path.exists(path):
      return path
  return os.path.join('configs', 'default.py')


def main(argv=None):
  from absl import app
  from absl import flags
  from ml_collections import config_flags

  flags.DEFINE_string('workdir', None, 'Directory for checkpoints and logs.')
  flags.mark_flag_as_required('workdir')
  config_flags.DEFINE_config_file(
    'config',
    default_config_path(),
    'Config file (configs/*.py); fields override as --config.key=value.',
  )
  cli.define_verbose_flag()

  def run(args):
    try:
      run_lock.check_free(flags.FLAGS.workdir, flags.FLAGS.config)
      cli.start_command(args, flags.FLAGS.verbose)
      summary = train_and_evaluate(flags.FLAGS.config, flags.FLAGS.workdir)
    except run_lock.WorkdirLockedError as e:  # a scheduler may retry later
      print(f'error: {e}', file=sys.stderr)
      sys.exit(run_lock.EXIT_CODE)
    print(
      json.dumps({k: v for k, v in summary.items() if k != 'test'}, indent=2)
    )

  app.run(run, argv=argv)


if __name__ == '__main__':
  main()
