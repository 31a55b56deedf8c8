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
  assert report['balanced_accuracy'] == pytest.approx(
    sk.balanced_accuracy_score(labels, predictions)
  )
  table = metrics.format_table(report)
  assert 'c6' in table and 'macro-F1' in table


def test_balanced_accuracy_leaves_out_classes_absent_from_the_labels():
  """As scikit-learn: the mean recall over the classes the labels have, so
  a class with no example neither counts as 0 nor as 1."""
  labels = np.array([0, 0, 0, 0, 2, 2])
  predictions = np.array([0, 0, 0, 1, 2, 0])
  report = metrics.classification_report(
    metrics.confusion_matrix(labels, predictions, 3), ['a', 'b', 'c']
  )
  assert report['balanced_accuracy'] == pytest.approx(
    sk.balanced_accuracy_score(labels, predictions)
  )
  assert report['balanced_accuracy'] == pytest.approx((3 / 4 + 1 / 2) / 2)
