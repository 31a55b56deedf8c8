"""Classification metrics from exact counts (NumPy; every example once)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def confusion_matrix(
  labels: np.ndarray, predictions: np.ndarray, num_classes: int
) -> np.ndarray:
  """[K, K] counts; row = true class, column = predicted class."""
  matrix = np.zeros((num_classes, num_classes), np.int64)
  np.add.at(matrix, (np.asarray(labels), np.asarray(predictions)), 1)
  return matrix


def classification_report(
  matrix: np.ndarray, class_names: Sequence[str]
) -> dict:
  """Accuracy, balanced accuracy, macro-F1 and per-class precision/recall/F1
  of a confusion matrix.

  A class never predicted has precision 0; a class absent from the labels
  has recall 0 and is still part of the macro average (as scikit-learn with
  zero_division=0). Balanced accuracy is the mean recall of the classes
  present in the labels (scikit-learn's balanced_accuracy_score): on
  imbalanced test sets (AffectNet's training distribution, FER2013's
  Disgust) it weighs every class alike.
  """
  matrix = np.asarray(matrix)
  true_pos = np.diag(matrix).astype(np.float64)
  predicted = matrix.sum(axis=0)
  support = matrix.sum(axis=1)
  precision = np.divide(
    true_pos, predicted, out=np.zeros_like(true_pos), where=predicted > 0
  )
  recall = np.divide(
    true_pos, support, out=np.zeros_like(true_pos), where=support > 0
  )
  denom = precision + recall
  f1 = np.divide(
    2 * precision * recall, denom, out=np.zeros_like(true_pos), where=denom > 0
  )
  total = int(matrix.sum())
  return {
    'num_examples': total,
    'accuracy': float(true_pos.sum() / total) if total else 0.0,
    'balanced_accuracy': float(recall[support > 0].mean()) if total else 0.0,
    'macro_f1': float(f1.mean()),
    'per_class': {
      name: {
        'precision': float(p),
        'recall': float(r),
        'f1': float(f),
        'support': int(s),
      }
      for name, p, r, f, s in zip(class_names, precision, recall, f1, support)
    },
    'confusion_matrix': matrix.tolist(),
    'class_names': list(class_names),
  }


def format_table(report: dict) -> str:
  """A short text table of a classification report."""
  width = max(8, *(len(n) for n in report['class_names']))
  lines = [f'{"class":<{width}}  precision  recall     f1  support']
  for name, row in report['per_class'].items():
    lines.append(
      f'{name:<{width}}  {row["precision"]:9.4f}  {row["recall"]:6.4f}'
      f'  {row["f1"]:.4f}  {row["support"]:7d}'
    )
  lines.append(
    f'{"accuracy":<{width}}  {report["accuracy"]:.4f} of '
    f'{report["num_examples"]} examples; balanced '
    f'{report["balanced_accuracy"]:.4f}; macro-F1 {report["macro_f1"]:.4f}'
  )
  return '\n'.join(lines)
