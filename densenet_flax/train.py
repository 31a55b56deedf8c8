"""Training: `train_and_evaluate(config, workdir)` and its command line.

  python -m densenet_flax.train --workdir runs/demo [--config configs/x.py]

One loop for one device (jit), many local devices (pmap) and many hosts.
Restarting with the same workdir resumes from the latest checkpoint at the
exact step, with the data continuing where it was; SIGTERM/SIGINT save a
checkpoint and return. Process 0 writes logs, TensorBoard scalars
(workdir/tensorboard), metrics.jsonl, reports and plots (workdir/reports).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import signal
import threading
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from densenet_flax import checkpointing
from densenet_flax import cli
from densenet_flax import config as config_lib
from densenet_flax import evaluate as evaluate_lib
from densenet_flax import models
from densenet_flax import optim
from densenet_flax import parallel
from densenet_flax import reporting
from densenet_flax import steps

CONFIG_FILE = 'config.json'

log = logging.getLogger(__name__)


def compute_dtype(config):
  if not config.half_precision:
    return jnp.float32
  return jnp.float16 if config.half_precision_dtype == 'float16' else jnp.bfloat16


def build_model(config, num_classes: int, axis_name: str | None = None):
  """The configured DenseNet; BN statistics are averaged over `axis_name`."""
  overrides = dict(config.model_overrides)
  if config.init_from_keras:
    from densenet_flax import convert
    overrides.setdefault('bn_epsilon', convert.KERAS_BN_EPSILON)
  return models.create_model(
      config.model, num_classes=num_classes, dtype=compute_dtype(config),
      memory_efficient=config.memory_efficient, bn_axis_name=axis_name,
      **overrides)


def run_identity(config, num_classes: int) -> dict:
  """What a checkpoint must match to be restored into this run."""
  return {'model': config.model, 'num_classes': num_classes,
          'dataset': config.dataset,
          'model_overrides': config.model_overrides.to_dict()}


def input_shape(config) -> tuple[int, int, int]:
  """(height, width, channels) of one model input."""
  return (config.image_size, config.image_size, config.channels)


def open_checkpoints(config, workdir: str) -> checkpointing.Checkpoints:
  """The checkpoints of a training workdir, kept as the config says."""
  return checkpointing.Checkpoints(
      os.path.join(workdir, 'checkpoints'), keep=config.keep_checkpoints,
      select_metric=config.select_metric)


def save_config(config, workdir: str) -> None:
  with open(os.path.join(workdir, CONFIG_FILE), 'w') as f:
    f.write(config.to_json(indent=2))


def load_config(workdir: str) -> ml_collections.ConfigDict:
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path} not found: is {workdir} a training workdir?')
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


def pretrained_variables(config, image_size: int, channels: int):
  """ImageNet weights of a keras.applications DenseNet (downloaded by Keras)."""
  if channels != 3:
    raise ValueError('config.init_from_keras needs config.channels=3 (the '
                     'ImageNet weights take RGB)')
  import keras
  from densenet_flax import convert

  keras_model = getattr(keras.applications, config.init_from_keras)(
      weights='imagenet', include_top=False,
      input_shape=(image_size, image_size, 3))
  return convert.from_keras(keras_model)


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
  """Turns SIGTERM/SIGINT into a flag the loop checks between steps."""

  def __init__(self):
    self.signal = None

  def __call__(self, signum, frame):
    del frame
    self.signal = signal.Signals(signum).name

  @contextlib.contextmanager
  def installed(self):
    if threading.current_thread() is not threading.main_thread():
      yield self
      return
    previous = {s: signal.signal(s, self) for s in (signal.SIGTERM,
                                                     signal.SIGINT)}
    try:
      yield self
    finally:
      for s, handler in previous.items():
        signal.signal(s, handler)


class _MetricBuffer:
  """Per-step metrics kept on device until a log point fetches them at once."""

  def __init__(self):
    self.first_step = None
    self.items = []
    self.start_time = time.perf_counter()

  def add(self, step: int, metrics) -> None:
    if self.first_step is None:
      self.first_step = step
    self.items.append(metrics)

  def flush(self, first_replica) -> dict[str, np.ndarray] | None:
    """Stacked host metrics since the last flush; raises on a NaN/Inf loss."""
    if not self.items:
      return None
    fetched = jax.device_get([first_replica(m) for m in self.items])
    stacked = {k: np.array([m[k] for m in fetched]) for k in fetched[0]}
    bad = np.flatnonzero(~np.isfinite(stacked['loss']))
    if bad.size:
      step = self.first_step + int(bad[0]) + 1
      raise FloatingPointError(
          f'Loss is {stacked["loss"][bad[0]]} at step {step}; training stopped '
          f'and that state was not saved')
    stacked['seconds'] = time.perf_counter() - self.start_time
    self.first_step, self.items = None, []
    self.start_time = time.perf_counter()
    return stacked


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str
                       ) -> dict:
  """Trains, evaluates every `eval_every_epochs`, checkpoints, and reports.

  Returns a summary: final step, eval metrics, test report (if a test split
  is configured), and whether the run was interrupted.
  """
  if config.distributed:
    jax.distributed.initialize()
  dp = parallel.DataParallel()
  config_lib.validate(config, jax.device_count())
  config_lib.enable_compilation_cache(config)
  is_writer = jax.process_index() == 0
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  reports_dir = os.path.join(workdir, 'reports')
  if is_writer:
    os.makedirs(reports_dir, exist_ok=True)
    save_config(config, workdir)

  from densenet_flax.data import pipeline  # TensorFlow loads only here
  data = pipeline.InputPipeline(config, num_devices=dp.num_devices)
  num_classes = data.spec.num_classes
  model = build_model(config, num_classes, dp.axis_name)
  steps_per_epoch = data.steps_per_epoch
  total_steps = int(config.num_epochs * steps_per_epoch)
  tx, schedule = optim.create_optimizer(config, steps_per_epoch)

  rng = jax.random.key(config.seed)
  init_rng, step_rng = jax.random.split(rng)
  image_shape = input_shape(config)
  variables = (pretrained_variables(config, config.image_size, config.channels)
               if config.init_from_keras else None)
  use_dynamic_scale = (config.half_precision and
                       config.half_precision_dtype == 'float16' and
                       jax.default_backend() == 'gpu')
  state = steps.create_train_state(init_rng, model, tx, image_shape,
                                   use_dynamic_scale=use_dynamic_scale,
                                   variables=variables)

  identity = run_identity(config, num_classes)
  ckpts = open_checkpoints(config, workdir)
  start_step = 0
  latest = ckpts.latest_step()
  if latest is not None:
    state, _ = ckpts.restore(latest, jax.eval_shape(lambda: state), identity)
    start_step = int(jax.device_get(state.step))
    log.info('Resuming at step %d of %d from %s', start_step, total_steps,
             ckpts.directory)

  writer = reporting.MetricWriter(workdir, enabled=is_writer)
  writer.truncate_after(start_step)
  train_step = dp.compile(functools.partial(
      steps.train_step, num_classes=num_classes, axis_name=dp.axis_name,
      label_smoothing=config.label_smoothing, mixup_alpha=config.mixup_alpha,
      class_weights=class_weights(config, data)),
      num_args=3, broadcast=(2,), donate_state=True)
  eval_step = dp.compile(steps.eval_step, num_args=2)

  def evaluate(split, tta=None):
    return evaluate_lib.evaluate_split(eval_step, state, data, split, dp,
                                       tta=tta)

  def save(step, eval_metrics=None, force=False):
    return ckpts.save(step, dp.first_replica(state), identity,
                      eval_metrics=eval_metrics, force=force)

  state = dp.put_replicated(state)
  step_rng = jax.device_put(step_rng, dp.devices[0])
  # On CPU, tf.data and XLA share the cores: letting the next batch be made
  # while a step runs asynchronously oversubscribed them and doubled the step
  # time (digits demo, 2 cores: 190 ms vs 95 ms). There, wait for each step.
  sync_each_step = jax.default_backend() == 'cpu'
  batches = parallel.prefetch(data.train_batches(start_step), dp.put_batch)
  buffer = _MetricBuffer()
  last_eval: dict = {}
  interrupted = None
  images_per_step = config.batch_size
  progress = _progress(config, is_writer, start_step, total_steps)
  log.info('Training %s on %s: %d steps (%d epochs x %d), %d device(s), '
           'batch %d; workdir %s', config.model, config.dataset, total_steps,
           config.num_epochs, steps_per_epoch, dp.num_devices,
           config.batch_size, workdir)

  def log_train(step):
    stacked = buffer.flush(dp.first_replica)
    if stacked is None:
      return
    scalars = {'train/loss': float(stacked['loss'].mean()),
               'train/accuracy': float(stacked['accuracy'].mean()),
               'train/learning_rate': float(schedule(step - 1)),
               'train/images_per_second':
                   len(stacked['loss']) * images_per_step / stacked['seconds']}
    writer.write(step, scalars)
    if progress is not None:
      progress.set_postfix(loss=f'{scalars["train/loss"]:.4f}',
                           acc=f'{scalars["train/accuracy"]:.4f}',
                           img_s=f'{scalars["train/images_per_second"]:.0f}')

  stop_at = (start_step + config.stop_after_steps if config.stop_after_steps
             else None)
  with _StopRequest().installed() as stop:
    for step in range(start_step, total_steps):
      with jax.transfer_guard('disallow'):
        state, metrics = train_step(state, next(batches), step_rng)
      if sync_each_step:
        jax.block_until_ready(metrics)
      done = step + 1
      buffer.add(step, metrics)
      if done == stop_at and done < total_steps:
        stop.signal = 'stop_after_steps'
      if progress is not None:
        progress.update(1)
      epoch_end = done % steps_per_epoch == 0
      epoch = done // steps_per_epoch
      evaluate_now = epoch_end and (epoch % config.eval_every_epochs == 0 or
                                    done == total_steps)
      checkpoint_now = done % config.checkpoint_every_steps == 0
      if (done % config.log_every_steps == 0 or evaluate_now or checkpoint_now
          or stop.signal or done == total_steps):
        log_train(done)  # raises on NaN/Inf before anything is saved
      if evaluate_now:
        report = evaluate(config.eval_split)
        last_eval = {'accuracy': report['accuracy'],
                     'macro_f1': report['macro_f1'], 'loss': report['loss']}
        writer.write(done, {f'eval/{k}': v for k, v in last_eval.items()})
        _say(progress, f'epoch {epoch} (step {done}): {config.eval_split} '
                       f'accuracy {report["accuracy"]:.4f}, macro-F1 '
                       f'{report["macro_f1"]:.4f}, loss {report["loss"]:.4f}')
        save(done, eval_metrics=last_eval, force=True)
      elif checkpoint_now or done == total_steps:
        save(done, force=True)
      if stop.signal:
        if done not in ckpts.all_steps():
          save(done, force=True)
        interrupted = stop.signal
        _say(progress, f'{stop.signal} at step {done}: checkpoint saved to '
                       f'{ckpts.directory}; run the same command to resume.')
        break
  if progress is not None:
    progress.close()
  ckpts.wait()

  summary = {'step': int(jax.device_get(dp.first_replica(state).step)),
             'total_steps': total_steps, 'eval': last_eval,
             'interrupted': interrupted, 'workdir': workdir,
             'checkpoints': ckpts.directory}
  if not interrupted and config.test_split:
    # The best checkpoint by eval_split, unless the test split is that split:
    # picking a checkpoint on the split you report would flatter it.
    tested_step = summary['step']
    best = ckpts.best_step()
    if config.test_split != config.eval_split and best is not None:
      tested_step = best
      if best != summary['step']:
        restored, _ = ckpts.restore(
            best, jax.eval_shape(lambda: dp.first_replica(state)), identity)
        state = dp.put_replicated(restored)
    report = evaluate(config.test_split, tta=config.test_tta or None)
    if is_writer:
      paths = evaluate_lib.write_report(
          report, workdir, config.test_split, tested_step,
          tta=config.test_tta or None)
      _say(progress, f'{config.test_split} (step {tested_step}'
                     f'{", " + config.test_tta if config.test_tta else ""}): '
                     f'accuracy {report["accuracy"]:.4f}, macro-F1 '
                     f'{report["macro_f1"]:.4f}; report {paths[0]}')
    summary['test'] = report
  if is_writer and os.path.exists(writer.history_path):
    path = reporting.plot_training_curves(
        reporting.read_history(writer.history_path),
        os.path.join(reports_dir, 'training_curves.png'))
    log.info('Training curves: %s', path)
  writer.close()
  ckpts.close()
  return summary


def _progress(config, enabled, start, total):
  if not (enabled and config.progress_bar):
    return None
  from tqdm import tqdm
  return tqdm(total=total, initial=start, unit='step', dynamic_ncols=True)


def _say(progress, message: str) -> None:
  """A line for the person watching: above the progress bar, or logged."""
  if progress is not None:
    progress.write(message)
  else:
    log.info(message)


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
      'config', default_config_path(),
      'Config file (configs/*.py); fields override as --config.key=value.')

  def run(args):
    cli.start_command(args)
    summary = train_and_evaluate(flags.FLAGS.config, flags.FLAGS.workdir)
    print(json.dumps({k: v for k, v in summary.items() if k != 'test'},
                     indent=2))

  app.run(run, argv=argv)


if __name__ == '__main__':
  main()
