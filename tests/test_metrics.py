"""Classification report against scikit-learn's independent implementation."""

import numpy as np
import pytest

from densenet_flax import metrics

sk = pytest.importorskip('sklearn.metrics')


def test_report_matches_scikit_learn():
  rng = np.random.RandomState(0)
  labels = rng.randint(0, 7, 500)
  predictions = np.where(rng.rand(500) < 0.6, labels, rng.randint(0, 7, 500))
  predictions[predictions == 1] = 0  # class 1 never predicted
  matrix = metrics.confusion_matrix(labels, predictions, 7)
  np.testing.assert_array_equal(
    matrix, sk.confusion_matrix(labels, predictions, labels=range(7))
  )
  report = metrics.classification_report(matrix, [f'c{i}' for i in range(7)])
  p, r, f, s = sk.precision_recall_fscore_support(
    labels, predictions, labels=range(7), zero_division=0
  )
  for i in range(7):
    row = report['per_class'][f'c{i}']
    assert row['precision'] == pytest.approx(p[i])
    assert row['recall'] == pytest.approx(r[i])
    assert row['f1'] == pytest.approx(f[i])
    assert row['support'] == s[i]
  assert report['accuracy'] == pytest.approx(
    sk.accuracy_score(labels, predictions)
  )
  assert report['macro_f1'] == pytest.approx(
    sk.f1_score(
      labels, predictions, average='macro', labels=range(7), zero_division=0
    )
  )
  table = metrics.format_table(report)
  assert 'c6' in table and 'macro-F1' in table
