"""Training: `train_and_evaluate(config, workdir)` (its command line is
densenet_flax/train.py).

One loop for one device (jit) and for many devices of one or many processes
(jit over shard_map, or pmap; see parallel.py). Restarting with the same
workdir resumes from the latest checkpoint at the exact step, with the data
continuing where it was. SIGTERM/SIGINT to any process stop every process at
the same step, save one checkpoint and return; a second signal exits at once.
Process 0 writes logs, TensorBoard scalars (workdir/tensorboard),
metrics.jsonl, reports and plots (workdir/reports). One run trains in a
workdir at a time (run_lock.py).

Kept on purpose, beyond the Flax and big_vision loops: the data resumes at
the exact example, evaluation pads its last batch so every example counts
once, every process stops at the same step, and a step skipped by the
dynamic loss scale leaves BN statistics and the EMA as they were.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import os
import signal
import threading
import time
from typing import Any

import jax
import ml_collections
import numpy as np

from densenet_flax import accelerators
from densenet_flax import checkpointing
from densenet_flax import config_checks
from densenet_flax import config_keys
from densenet_flax import evaluation
from densenet_flax import layers
from densenet_flax import optim
from densenet_flax import parallel
from densenet_flax import pretrained
from densenet_flax import recipe
from densenet_flax import reporting
from densenet_flax import resume_policy
from densenet_flax import run_directory
from densenet_flax import run_lock
from densenet_flax import steps
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
  """When the loop stops before the end, and why.

  Installed as the SIGTERM/SIGINT handler (a second signal raises
  KeyboardInterrupt at once). `after(done)` says whether to stop after step
  `done`: a signal to this process or another, or config.stop_after_steps.
  Every process must stop at the same step, so a signal is read through an
  OR over the processes that runs beside the next step (`any_process`) and is
  seen one step late, the same step on every process; on CPU, where the
  collective would not overlap the next step anyway, it is read at once.
  """

  def __init__(
    self,
    dp: parallel.DataParallel | None = None,
    stop_at: int | None = None,
    total_steps: int = 0,
    sync: bool = False,
  ):
    self.signal = None
    self._dp, self._stop_at, self._total = dp, stop_at, total_steps
    self._sync = sync
    self._signalled = lambda: False  # the OR started after the last step

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

  def after(self, done: int) -> str | None:
    """Why to stop after step `done`, or None to go on."""
    if self._signalled():
      return self.signal or 'a stop signal to another process'
    if done == self._stop_at and done < self._total:
      return 'stop_after_steps'
    self._signalled = self._dp.any_process(self.signal is not None)
    if self._sync:
      self._signalled()
    return None


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


class _TrainLog:
  """What the loop shows people: per-step metrics kept on device until a log
  point writes them (TensorBoard, metrics.jsonl), a progress bar, messages,
  and the first step's seconds (compiling or loading the step) apart."""

  def __init__(self, run: _Run, start_step: int):
    self._run, self._start = run, start_step
    self._buffer = _MetricBuffer()
    self._progress = None
    if run.is_writer and run.config.progress_bar:
      from tqdm import tqdm

      self._progress = tqdm(
        total=run.total_steps,
        initial=start_step,
        unit='step',
        dynamic_ncols=True,
      )

  def add(self, step: int, metrics, started: float) -> None:
    """Step `step`'s metrics, its step having started at `started`."""
    self._buffer.add(step, metrics)
    if step == self._start:  # ready: the loop waited for the first step
      seconds = time.perf_counter() - started
      self._buffer.restart_clock(seconds)
      log.info(
        'First step done in %.1f s, compiling the train step or loading it '
        'from the compilation cache (%s)',
        seconds,
        self._run.config.get('compilation_cache_dir') or 'off',
      )
    if self._progress is not None:
      self._progress.update(1)

  def write(self, done: int) -> None:
    """Writes the steps since the last write; raises FloatingPointError on a
    non-finite loss or state (before anything of it is saved)."""
    stacked = self._buffer.flush(self._run.dp.first_replica)
    if stacked is None:
      return
    scalars = {
      'train/loss': float(stacked['loss'].mean()),
      'train/accuracy': float(stacked['accuracy'].mean()),
      'train/learning_rate': float(self._run.schedule(done - 1)),
    }
    if stacked['timed_steps']:
      scalars['train/images_per_second'] = (
        stacked['timed_steps']
        * self._run.config.batch_size
        / stacked['seconds']
      )
    if 'untimed_seconds' in stacked:  # the run's first step
      scalars['train/first_step_seconds'] = stacked['untimed_seconds']
    if 'loss_scale' in stacked:  # dynamic loss scaling
      scalars['train/loss_scale'] = float(stacked['loss_scale'][-1])
      scalars['train/skipped_steps'] = float(
        np.sum(stacked['grads_finite'] == 0)
      )
    self._run.writer.write(done, scalars)
    if self._progress is not None:
      shown = {
        'loss': f'{scalars["train/loss"]:.4f}',
        'acc': f'{scalars["train/accuracy"]:.4f}',
      }
      if 'train/images_per_second' in scalars:  # none for the 1st step alone
        shown['img_s'] = f'{scalars["train/images_per_second"]:.0f}'
      self._progress.set_postfix(**shown)

  def say(self, message: str) -> None:
    """A line for the person watching: above the progress bar, or logged."""
    if self._progress is not None:
      self._progress.write(message)
    else:
      log.info(message)

  def close(self) -> None:
    if self._progress is not None:
      self._progress.close()


@dataclasses.dataclass(frozen=True)
class _Run:
  """What one training run is built from, once (`_build_run`)."""

  config: ml_collections.ConfigDict
  workdir: str
  dp: parallel.DataParallel
  data: Any  # pipeline.InputPipeline
  model: Any
  tx: Any
  schedule: Any
  train_step: parallel.CompiledStep  # steps.train_step
  eval_step: parallel.CompiledStep  # steps.eval_step
  ckpts: checkpointing.Checkpoints
  writer: reporting.MetricWriter
  identity: dict
  steps_per_epoch: int
  total_steps: int
  is_writer: bool

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

  def split_report(
    self, state, split: str, tta: str | None = None, *, raw: bool = False
  ) -> dict:
    """The evaluation report on `split` of the run's model: the EMA weights
    where the run keeps them (unless `raw`), else the trained weights."""
    if recipe.uses_ema(self.config) and not raw:
      state = state.ema_model()
    return evaluation.evaluate_split(
      self.eval_step, state, self.data, split, self.dp, tta=tta
    )

  def close(self) -> None:
    """Finishes the in-flight save and closes the writers, even after an error."""
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
    last evaluation's accuracy, balanced_accuracy, macro_f1 and loss in this
    call; {} if none ran), 'interrupted' (None, or why training stopped
    early: a signal's name, 'a stop signal to another process' or
    'stop_after_steps'), 'workdir' (absolute), 'checkpoints' (their
    directory), and, when config.test_split is set and the run was not
    interrupted, 'test' (`evaluation.evaluate_split`'s report on the
    checkpoint config.select_on picks; its 'selection' says which).

  Raises:
    ValueError: an invalid config, or batch sizes that do not divide over
      the devices.
    FloatingPointError: the loss, params or BN statistics stopped being
      finite; that state is not saved.
    resume_policy.ConfigChangeError: a resume with a config that changes the
      result, unless config.allow_config_change.
    checkpointing.NoRestorableCheckpointError: every checkpoint is damaged
      (config.restart=True starts from step 0).
    run_lock.WorkdirLockedError: another run holds the workdir (after
      config.wait_for_lock_s); nothing was written to it.
  """
  config, dp = _start(config, workdir)
  workdir = os.path.abspath(workdir)
  # One writer per workdir: held from before anything is written to the end.
  with run_lock.hold(workdir, config):
    run = _build_run(config, workdir, dp)
    try:
      return _run_to_the_end(run)
    except Exception as e:
      if dp.num_processes > 1:
        log.error(
          'Process %d of %d stopped: %s. If another process died, its log '
          'says why; rerun the same command on every process to resume from '
          'the last checkpoint.',
          jax.process_index(),
          dp.num_processes,
          e,
        )
      raise
    finally:
      run.close()


def _start(config, workdir: str):
  """(the config as the run records it, the devices): the config checked
  before anything starts, the processes joined, the backend logged."""
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
  return config, dp


def _run_to_the_end(run: _Run) -> dict:
  """Restore or start, train, test once: train_and_evaluate's summary."""
  state, start_step = _restore_or_init(run)
  train_log = _TrainLog(run, start_step)
  try:
    state, interrupted, last_eval = _train(run, state, start_step, train_log)
    step = int(jax.device_get(run.dp.first_replica(state).step))
    summary = {
      'step': step,
      'total_steps': run.total_steps,
      'eval': last_eval,
      'interrupted': interrupted,
      'workdir': run.workdir,
      'checkpoints': run.ckpts.directory,
    }
    if not interrupted and run.config.test_split:
      summary['test'] = _final_test(run, state, step, train_log.say)
  finally:
    train_log.close()
  if run.is_writer:
    _plot_curves(run)
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
  spec = steps.TrainSpec(
    num_classes=num_classes,
    label_smoothing=config.label_smoothing,
    mixup_alpha=config.mixup_alpha,
    class_weights=class_weights,
    frozen=optim.frozen_stages(config),
    ema_decay=config.ema_decay,
    label_mode=config.label_mode,
  )
  return dp.compile(
    functools.partial(steps.train_step, spec=spec, axis_name=dp.axis_name),
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
    changes = resume_policy.check_resume(
      run.ckpts.meta(step), run.config, run.workdir, step
    )
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


def run_keys(config):
  """(init key, step key) of the run's seed, of PRNG `config.rng_impl`."""
  return jax.random.split(jax.random.key(config.seed, impl=config.rng_impl))


def _train(run: _Run, state, start_step: int, train_log: _TrainLog):
  """Steps from `start_step` to the end, or to a stop.

  Returns (state, why it stopped early or None, the last evaluation's
  metrics or {}).
  """
  config, dp = run.config, run.dp
  _log_the_setup(run, state)
  step_key = dp.put_broadcast(run_keys(config)[1])
  batches = parallel.prefetch(run.data.train_batches(start_step), dp.put_batch)
  # On CPU, tf.data and XLA share the cores: letting the next batch be made
  # while a step runs asynchronously oversubscribes them and slows the step
  # (docs/benchmarks.md#what-the-steps-design-rests-on). There, wait for
  # each step.
  sync_each_step = jax.default_backend() == 'cpu'
  stop_at = (
    start_step + config.stop_after_steps if config.stop_after_steps else None
  )
  request = _StopRequest(dp, stop_at, run.total_steps, sync_each_step)
  # A resumed run's first step has its checkpoint already.
  saved_at, last_eval, stop = start_step or None, {}, None
  with request.installed():
    for step in range(start_step, run.total_steps):
      with jax.transfer_guard('disallow'):
        batch = next(batches)
        started = time.perf_counter()
        state, metrics = run.train_step(state, batch, step_key)
      if sync_each_step or step == start_step:
        jax.block_until_ready(metrics)
      train_log.add(step, metrics, started)
      done = step + 1
      stop = request.after(done)
      if stop:  # save first: a preempted job may have seconds left
        train_log.write(done)  # raises on NaN/Inf before anything is saved
        if saved_at != done:
          run.save(state, done)
        train_log.say(
          f'{stop} at step {done}: checkpoint saved to '
          f'{run.ckpts.directory}; run the same command to resume.'
        )
        break
      evaluated, saved = _evaluate_and_save(run, state, done, train_log)
      last_eval = evaluated or last_eval
      saved_at = done if saved else saved_at
  return state, stop, last_eval


def _log_the_setup(run: _Run, state) -> None:
  config, dp = run.config, run.dp
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


def _evaluate_and_save(run: _Run, state, done: int, train_log: _TrainLog):
  """After step `done`: logs, the epoch's evaluation, a save.

  Returns (the evaluation's metrics, or None when none ran; whether a
  checkpoint was saved).
  """
  config = run.config
  epoch, within = divmod(done, run.steps_per_epoch)
  last = done == run.total_steps
  evaluate_now = within == 0 and (epoch % config.eval_every_epochs == 0 or last)
  checkpoint_now = done % config.checkpoint_every_steps == 0 or last
  if done % config.log_every_steps == 0 or evaluate_now or checkpoint_now:
    train_log.write(done)  # raises on NaN/Inf before anything is saved
  if not evaluate_now:
    if checkpoint_now:
      run.save(state, done)
    return None, checkpoint_now
  split = config_keys.selection_split(config)
  report = run.split_report(state, split)
  names = ('accuracy', 'balanced_accuracy', 'macro_f1', 'loss')
  metrics = {name: report[name] for name in names}
  scalars = {f'eval/{k}': v for k, v in metrics.items()}
  if recipe.uses_ema(config):  # the EMA is evaluated; the raw weights too
    raw = run.split_report(state, split, raw=True)
    scalars.update({f'eval/raw_{k}': raw[k] for k in metrics})
  run.writer.write(done, scalars)
  weights = ' (EMA weights)' if recipe.uses_ema(config) else ''
  train_log.say(
    f'epoch {epoch} (step {done}): {split} accuracy '
    f'{report["accuracy"]:.4f}, balanced {report["balanced_accuracy"]:.4f}'
    f', macro-F1 {report["macro_f1"]:.4f}, loss {report["loss"]:.4f}'
    f'{weights}'
  )
  run.save(state, done, eval_metrics=metrics)
  return metrics, True


def _final_test(run: _Run, state, last_step: int, say) -> dict:
  """The test split on the best checkpoint by the selection split (else the
  last state), once. Its report says how the checkpoint was chosen."""
  config, dp = run.config, run.dp
  run.ckpts.wait()
  selected_on = config_keys.selection_split(config)
  tested_step = last_step
  best = None if config.select_on == 'last' else run.ckpts.best_step()
  if best is not None:
    tested_step = best
    if best != last_step:
      abstract = dp.abstract_global(state)
      restored, _ = run.ckpts.restore(best, abstract, run.identity)
      state = dp.put_replicated(restored)
  tta = config.test_tta or None
  report = run.split_report(state, config.test_split, tta=tta)
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
    say(
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
