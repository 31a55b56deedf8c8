"""What a run writes for people: TensorBoard scalars, a JSONL history, plots.

The history, metrics.jsonl, only grows: rows that a resume from an earlier
step or a deliberate fresh start supersedes move to a side file beside it,
metrics.superseded-<UTC time>.jsonl, and the live file keeps the rows of
the run as it stands (what the curves and reports read). Rewritten files
are replaced whole (atomic.py).
"""

from __future__ import annotations

import datetime
import json
import logging
import os
from collections.abc import Sequence

import numpy as np

from densenet_flax import atomic

log = logging.getLogger(__name__)


class MetricWriter:
  """Scalars to TensorBoard (workdir/tensorboard) and to workdir/metrics.jsonl.

  Only the writing process (process 0) writes; others get a no-op writer.
  """

  def __init__(self, workdir: str, enabled: bool = True):
    self.enabled = enabled
    self.history_path = os.path.join(workdir, 'metrics.jsonl')
    self._tensorboard_dir = os.path.join(workdir, 'tensorboard')
    # Opened at the first row: a run that stops before it leaves no empty
    # event file.
    self._summary = None

  def supersede_after(self, step: int) -> str | None:
    """Moves the rows past `step` (a resumed run redoes those steps; 0 for a
    fresh start) to a dated side file, and returns its path (None if no row
    moved). The side file is complete on disk before metrics.jsonl is
    replaced, so a crash between the two duplicates rows, never loses one.
    An incomplete last line (a write cut short) moves too, as text."""
    if not self.enabled or not os.path.exists(self.history_path):
      return None
    rows, tail = _read_rows(self.history_path)
    kept = [r for r in rows if r['step'] <= step]
    moved = [r for r in rows if r['step'] > step]
    if tail is not None:
      moved.append({'incomplete_line': tail})
    if not moved:
      return None
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime(
      '%Y%m%dT%H%M%S.%fZ'
    )
    side = os.path.join(
      os.path.dirname(self.history_path), f'metrics.superseded-{stamp}.jsonl'
    )
    atomic.write_text(side, ''.join(json.dumps(r) + '\n' for r in moved))
    atomic.write_text(
      self.history_path, ''.join(json.dumps(r) + '\n' for r in kept)
    )
    log.info(
      '%d row(s) of metrics.jsonl past step %d moved to %s',
      len(moved),
      step,
      side,
    )
    return side

  def write(self, step: int, scalars: dict[str, float]) -> None:
    if not self.enabled:
      return
    import tensorflow as tf  # the loop already loads TF for tf.data

    if self._summary is None:
      self._summary = tf.summary.create_file_writer(self._tensorboard_dir)
    with self._summary.as_default(step=step):
      for name, value in scalars.items():
        tf.summary.scalar(name, value)
    self._summary.flush()
    self._append(
      {'step': int(step), **{k: float(v) for k, v in scalars.items()}}
    )

  def record(self, step: int, **fields) -> None:
    """A non-scalar event in metrics.jsonl (e.g. a config change on resume)."""
    if not self.enabled:
      return
    self._append({'step': int(step), **fields})

  def _append(self, row: dict) -> None:
    try:
      with open(self.history_path, 'a') as f:
        if f.tell() and not _ends_with_newline(self.history_path):
          f.write('\n')  # a row cut just before its newline stays whole
        f.write(json.dumps(row) + '\n')
    except OSError as e:
      raise OSError(
        e.errno,
        f'{self.history_path}: could not append the row '
        f'of step {row["step"]}: {e.strerror}',
      ) from e

  def close(self) -> None:
    if self._summary is not None:
      self._summary.close()


def _ends_with_newline(path: str) -> bool:
  with open(path, 'rb') as f:
    f.seek(-1, os.SEEK_END)
    return f.read(1) == b'\n'


def read_history(path: str) -> list[dict]:
  """The rows of metrics.jsonl. An incomplete last line (a write cut short
  by a crash or a full disk) is left out with a warning; a broken line
  elsewhere is an error naming it."""
  rows, tail = _read_rows(path)
  if tail is not None:
    log.warning(
      '%s: its last line is incomplete (a write was cut short) and '
      'is left out: %.80r',
      path,
      tail,
    )
  return rows


def _read_rows(path: str) -> tuple[list[dict], str | None]:
  """(complete rows, the text of an incomplete last line or None)."""
  with open(path) as f:
    lines = f.read().split('\n')
  rows, tail = [], None
  for number, line in enumerate(lines, 1):
    if not line.strip():
      continue
    try:
      rows.append(json.loads(line))
    except json.JSONDecodeError as e:
      if number == len(lines):  # no newline after it: cut short
        tail = line
        continue
      raise ValueError(
        f'{path}, line {number}: not a JSON row ({e.msg}): {line[:80]!r}'
      ) from None
  return rows, tail


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
        ax.plot(
          [r['step'] for r in rows],
          [r[f'{prefix}/{metric}'] for r in rows],
          label=prefix,
          marker='o' if prefix == 'eval' else None,
        )
    ax.set_xlabel('step')
    ax.set_title(metric)
    ax.grid(alpha=0.3)
    ax.legend()
  fig.tight_layout()
  with atomic.replacing(path) as temporary:
    fig.savefig(temporary, dpi=100, format='png')
  plt.close(fig)
  return path


def plot_confusion_matrix(
  matrix: np.ndarray, class_names: Sequence[str], path: str, title: str = ''
) -> str:
  """Row-normalised confusion matrix with counts, as a PNG."""
  plt = _pyplot()
  matrix = np.asarray(matrix)
  rows = matrix.sum(axis=1, keepdims=True)
  normalised = np.divide(
    matrix, rows, out=np.zeros(matrix.shape), where=rows > 0
  )
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
        ax.text(
          j,
          i,
          str(matrix[i, j]),
          ha='center',
          va='center',
          color='white' if normalised[i, j] > 0.5 else 'black',
          fontsize=8,
        )
  ax.set_title(title)
  fig.tight_layout()
  with atomic.replacing(path) as temporary:
    fig.savefig(temporary, dpi=100, format='png')
  plt.close(fig)
  return path
