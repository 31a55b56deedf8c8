"""Exact evaluation: every example of a split counted once, on any topology.

`evaluate_split` runs the compiled eval step over a split's padded batches;
each process evaluates its own shard and the per-example results are
gathered, so every process returns the same report. `evaluate` restores a
checkpoint of a training workdir (params and BN statistics only) and writes
workdir/eval/<split>-<step>[-<tta>].json (accuracy, macro-F1, per-class
precision/recall/F1, confusion matrix) and a confusion-matrix PNG beside it,
from process 0. The command line is densenet_flax/evaluate.py.
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np

from densenet_flax import accelerators
from densenet_flax import atomic
from densenet_flax import config_checks
from densenet_flax import config_keys
from densenet_flax import metrics
from densenet_flax import parallel
from densenet_flax import recipe
from densenet_flax import run_directory
from densenet_flax import steps


def evaluate_split(
  eval_step, state, data, split: str, dp, tta: str | None = None
) -> dict:
  """Classification report (plus mean loss) of `split`, every example once.

  eval_step: the compiled `steps.eval_step`; state: on the devices as `dp`
  places it; data: an InputPipeline.
  """
  labels, predictions, losses = [], [], []
  for batch in data.eval_batches(split, tta=tta):
    out = dp.local_rows(eval_step(state, dp.put_batch(batch)))
    mask = batch['mask'].reshape(-1)
    labels.append(batch['label'].reshape(-1)[mask])
    predictions.append(out['prediction'][mask])
    losses.append(out['loss'][mask])
  labels = np.concatenate(labels)
  predictions = np.concatenate(predictions)
  loss = np.concatenate(losses)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    # Shards differ in size by one at most; pad to gather, then drop the pad.
    size = data.num_eval_batches(split) * data.local_eval_batch
    gathered = multihost_utils.process_allgather(
      np.stack(
        [
          _pad_to(labels, size, -1),
          _pad_to(predictions, size, -1),
          _pad_to(loss, size, np.nan),
        ]
      )
    )
    keep = gathered[:, 0] >= 0
    labels = gathered[:, 0][keep].astype(np.int64)
    predictions = gathered[:, 1][keep].astype(np.int64)
    loss = gathered[:, 2][keep]
  matrix = metrics.confusion_matrix(labels, predictions, data.spec.num_classes)
  report = metrics.classification_report(matrix, data.class_names)
  report.update(split=split, tta=tta or 'none', loss=float(loss.mean()))
  return report


def selection_record(config, split: str, checkpoint: str | int) -> dict:
  """How a report's checkpoint was chosen, for the report itself.

  selected_on: the split whose metric picks the run's 'best'.
  test_used_for_selection: the checkpoint is that 'best' and the split
  evaluated is the one that picked it (select_on='test', the FER papers'
  protocol, or an eval_split watched as the test), so the figure is
  optimistic.
  """
  selected_on = config_keys.selection_split(config)
  return {
    'checkpoint': checkpoint,
    'selected_on': selected_on,
    'select_metric': config.select_metric,
    'test_used_for_selection': checkpoint == 'best' and split == selected_on,
  }


def _pad_to(values: np.ndarray, size: int, fill) -> np.ndarray:
  out = np.full(size, fill, np.float64)
  out[: len(values)] = values
  return out


def write_report(
  report: dict,
  workdir: str,
  split: str,
  step: int,
  tta: str | None = None,
  suffix: str = '',
) -> tuple[str, str]:
  """Writes eval/<split>-<step>[-tta][-suffix].json and .png; returns both."""
  from densenet_flax import reporting

  directory = os.path.join(workdir, 'eval')
  os.makedirs(directory, exist_ok=True)
  stem = os.path.join(
    directory,
    '-'.join([split, str(step)] + [part for part in (tta, suffix) if part]),
  )
  atomic.write_text(
    stem + '.json', json.dumps(dict(report, step=int(step)), indent=2)
  )
  reporting.plot_confusion_matrix(
    report['confusion_matrix'],
    report['class_names'],
    stem + '.png',
    title=f'{split} step {step}: accuracy {report["accuracy"]:.4f}',
  )
  return stem + '.json', stem + '.png'


def evaluate(
  workdir: str,
  checkpoint: str | int = 'latest',
  split: str | None = None,
  tta: str | None = None,
  *,
  raw_weights: bool = False,
) -> dict:
  """Restores `checkpoint` of `workdir` and evaluates `split` exactly.

  A run that keeps an EMA of its weights is evaluated on the EMA, as
  training evaluated it; `raw_weights` evaluates the trained weights instead
  (report files end in -raw).

  Under many processes (after `jax.distributed.initialize`), every process
  calls this; each reads its shard, and only process 0 writes the report.
  """
  from densenet_flax.data import pipeline  # TensorFlow loads only here

  workdir = os.path.abspath(workdir)
  # The default parallelism: both compute the same bits.
  dp = parallel.DataParallel()
  config = run_directory.load_config(workdir)
  split = split or config.test_split or config.eval_split
  if split.split('[')[0] not in config_checks.available_splits(config):
    raise ValueError(
      f"--split {split!r}: the run's splits are "
      f'{", ".join(config_checks.available_splits(config))}'
    )
  config_checks.validate_devices(config, dp.num_devices)
  accelerators.enable_compilation_cache(config)
  restored = run_directory.restore_run(
    workdir,
    checkpoint,
    config=config,
    sharding=dp.replicated,
    ema=False if raw_weights else None,
  )
  data = pipeline.InputPipeline(config, num_devices=dp.num_local_devices)
  state = steps.ModelState(apply_fn=restored.model.apply, **restored.variables)
  eval_step = dp.compile(steps.eval_step, per_example_output=True)
  report = evaluate_split(
    eval_step, dp.put_replicated(state), data, split, dp, tta=tta
  )
  step = report['step'] = restored.step
  report['selection'] = selection_record(config, split, checkpoint)
  raw = raw_weights and recipe.uses_ema(config)
  report['weights'] = 'ema' if restored.ema else 'trained'
  if jax.process_index() == 0:
    report['files'] = list(
      write_report(
        report, workdir, split, step, tta, suffix='raw' if raw else ''
      )
    )
  return report
