"""What a run writes for people: TensorBoard scalars, a JSONL history, plots."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import numpy as np


class MetricWriter:
  """Scalars to TensorBoard (workdir/tensorboard) and to workdir/metrics.jsonl.

  Only the writing process (process 0) writes; others get a no-op writer.
  """

  def __init__(self, workdir: str, enabled: bool = True):
    self.enabled = enabled
    self.history_path = os.path.join(workdir, 'metrics.jsonl')
    self._summary = None
    if enabled:
      import tensorflow as tf  # the loop already loads TF for tf.data

      self._tf = tf
      self._summary = tf.summary.create_file_writer(
          os.path.join(workdir, 'tensorboard'))

  def truncate_after(self, step: int) -> None:
    """Drops history past `step` (a resumed run redoes those steps)."""
    if not self.enabled or not os.path.exists(self.history_path):
      return
    kept = [r for r in read_history(self.history_path) if r['step'] <= step]
    with open(self.history_path, 'w') as f:
      f.writelines(json.dumps(r) + '\n' for r in kept)

  def write(self, step: int, scalars: dict[str, float]) -> None:
    if not self.enabled:
      return
    with self._summary.as_default(step=step):
      for name, value in scalars.items():
        self._tf.summary.scalar(name, value)
    self._summary.flush()
    with open(self.history_path, 'a') as f:
      f.write(json.dumps({'step': int(step), **{
          k: float(v) for k, v in scalars.items()}}) + '\n')

  def record(self, step: int, **fields) -> None:
    """A non-scalar event in metrics.jsonl (e.g. a config change on resume)."""
    if not self.enabled:
      return
    with open(self.history_path, 'a') as f:
      f.write(json.dumps({'step': int(step), **fields}) + '\n')

  def close(self) -> None:
    if self._summary is not None:
      self._summary.close()


def read_history(path: str) -> list[dict]:
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def _pyplot():
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  return plt


def plot_training_curves(history: Sequence[dict], path: str) -> str:
  """Loss and accuracy (train and eval) against step, as a PNG."""
  plt = _pyplot()
  fig, axes = plt.subplots(1, 2, figsize=(10, 4))
  for ax, metric in zip(axes, ('loss', 'accuracy')):
    for prefix in ('train', 'eval'):
      rows = [r for r in history if f'{prefix}/{metric}' in r]
      if rows:
        ax.plot([r['step'] for r in rows], [r[f'{prefix}/{metric}'] for r in rows],
                label=prefix, marker='o' if prefix == 'eval' else None)
    ax.set_xlabel('step')
    ax.set_title(metric)
    ax.grid(alpha=0.3)
    ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


def plot_confusion_matrix(matrix: np.ndarray, class_names: Sequence[str],
                          path: str, title: str = '') -> str:
  """Row-normalised confusion matrix with counts, as a PNG."""
  plt = _pyplot()
  matrix = np.asarray(matrix)
  rows = matrix.sum(axis=1, keepdims=True)
  normalised = np.divide(matrix, rows, out=np.zeros(matrix.shape), where=rows > 0)
  size = max(4, 0.6 * len(class_names) + 2)
  fig, ax = plt.subplots(figsize=(size, size))
  ax.imshow(normalised, cmap='Blues', vmin=0, vmax=1)
  ax.set_xticks(range(len(class_names)), class_names, rotation=45, ha='right')
  ax.set_yticks(range(len(class_names)), class_names)
  ax.set_xlabel('predicted')
  ax.set_ylabel('true')
  if len(class_names) <= 20:
    for i in range(len(class_names)):
      for j in range(len(class_names)):
        ax.text(j, i, str(matrix[i, j]), ha='center', va='center',
                color='white' if normalised[i, j] > 0.5 else 'black',
                fontsize=8)
  ax.set_title(title)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path
