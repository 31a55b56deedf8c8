"""Exact evaluation of a checkpoint, and its command line.

  python -m densenet_flax.evaluate --workdir runs/demo \
      [--checkpoint latest|best|STEP] [--split NAME] [--tta ten_crop]

Restores a checkpoint of a training workdir (the config is read from the
workdir), evaluates every example of the split exactly once, and writes
workdir/eval/<split>-<step>.json (accuracy, macro-F1, per-class
precision/recall/F1, confusion matrix) and a confusion-matrix PNG beside it.
With --tta ten_crop the files are named <split>-<step>-ten_crop.*.
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np

from densenet_flax import metrics as metrics_lib


def evaluate_split(eval_step, state, data, split: str, dp,
                   tta: str | None = None) -> dict:
  """Classification report (plus mean loss) of `split`, every example once.

  eval_step: the compiled `steps.eval_step`; state: on the devices as `dp`
  places it; data: an InputPipeline.
  """
  labels, predictions, losses = [], [], []
  for batch in data.eval_batches(split, tta=tta):
    out = jax.device_get(eval_step(state, dp.put_batch(batch)))
    mask = batch['mask'].reshape(-1)
    labels.append(batch['label'].reshape(-1)[mask])
    predictions.append(np.asarray(out['prediction']).reshape(-1)[mask])
    losses.append(np.asarray(out['loss']).reshape(-1)[mask])
  labels = np.concatenate(labels)
  predictions = np.concatenate(predictions)
  loss = np.concatenate(losses)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    # Shards differ in size by one at most; pad to gather, then drop the pad.
    size = data.num_eval_batches(split) * data.local_eval_batch
    gathered = multihost_utils.process_allgather(np.stack([
        _pad_to(labels, size, -1), _pad_to(predictions, size, -1),
        _pad_to(loss, size, np.nan)]))
    keep = gathered[:, 0] >= 0
    labels = gathered[:, 0][keep].astype(np.int64)
    predictions = gathered[:, 1][keep].astype(np.int64)
    loss = gathered[:, 2][keep]
  matrix = metrics_lib.confusion_matrix(labels, predictions,
                                        data.spec.num_classes)
  report = metrics_lib.classification_report(matrix, data.class_names)
  report.update(split=split, tta=tta or 'none', loss=float(loss.mean()))
  return report


def _pad_to(values: np.ndarray, size: int, fill) -> np.ndarray:
  out = np.full(size, fill, np.float64)
  out[:len(values)] = values
  return out


def write_report(report: dict, workdir: str, split: str, step: int,
                 tta: str | None = None) -> tuple[str, str]:
  """Writes eval/<split>-<step>[-tta].json and .png; returns both paths."""
  from densenet_flax import reporting

  directory = os.path.join(workdir, 'eval')
  os.makedirs(directory, exist_ok=True)
  stem = os.path.join(directory, f'{split}-{step}' + (f'-{tta}' if tta else ''))
  record = dict(report, step=int(step))
  with open(stem + '.json.tmp', 'w') as f:
    json.dump(record, f, indent=2)
  os.replace(stem + '.json.tmp', stem + '.json')  # never a half-written report
  reporting.plot_confusion_matrix(
      report['confusion_matrix'], report['class_names'], stem + '.png',
      title=f'{split} step {step}: accuracy {report["accuracy"]:.4f}')
  return stem + '.json', stem + '.png'


def evaluate(workdir: str, checkpoint: str = 'latest',
             split: str | None = None, tta: str | None = None) -> dict:
  """Restores `checkpoint` of `workdir` and evaluates `split` exactly."""
  from densenet_flax import config as config_lib
  from densenet_flax import optim
  from densenet_flax import parallel
  from densenet_flax import steps
  from densenet_flax import train as train_lib
  from densenet_flax.data import pipeline

  workdir = os.path.abspath(workdir)
  config = train_lib.load_config(workdir)
  split = split or config.test_split or config.eval_split
  dp = parallel.DataParallel()
  config_lib.validate(config, jax.device_count())
  config_lib.enable_compilation_cache(config)
  data = pipeline.InputPipeline(config, num_devices=dp.num_devices)
  if split.split('[')[0] not in data.spec.splits:
    raise ValueError(f'--split {split!r}: {data.spec.name} has splits '
                     f'{data.spec.splits}')
  num_classes = data.spec.num_classes
  config.init_from_keras = ''  # the checkpoint has the weights
  model = train_lib.build_model(config, num_classes)
  tx, _ = optim.create_optimizer(config, data.steps_per_epoch)
  abstract = jax.eval_shape(lambda: steps.create_train_state(
      jax.random.key(0), model, tx, train_lib.input_shape(config)))
  ckpts = train_lib.open_checkpoints(config, workdir)
  step = ckpts.resolve(checkpoint)
  state, _ = ckpts.restore(step, abstract,
                           train_lib.run_identity(config, num_classes))
  ckpts.close()
  eval_step = dp.compile(steps.eval_step, num_args=2)
  report = evaluate_split(eval_step, dp.put_replicated(state), data, split, dp,
                          tta=tta)
  report['step'] = step
  if jax.process_index() == 0:
    report['files'] = list(write_report(report, workdir, split, step, tta))
  return report


def main(argv=None):
  from absl import app
  from absl import flags

  flags.DEFINE_string('workdir', None, 'A training workdir.')
  flags.mark_flag_as_required('workdir')
  flags.DEFINE_string('checkpoint', 'latest', "'latest', 'best' or a step.")
  flags.DEFINE_string('split', None, 'Split to evaluate (default: the '
                      "config's test_split, else its eval_split).")
  flags.DEFINE_enum('tta', None, ['ten_crop'], 'Test-time augmentation.')

  def run(args):
    from densenet_flax import cli
    cli.start_command(args)
    f = flags.FLAGS
    report = evaluate(f.workdir, f.checkpoint, f.split, f.tta)
    print(f'{report["split"]} at step {report["step"]} '
          f'(tta: {report["tta"]}):')
    print(metrics_lib.format_table(report))
    for path in report.get('files', []):
      print(f'wrote {path}')

  app.run(run, argv=argv)


if __name__ == '__main__':
  main()
