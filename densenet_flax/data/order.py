"""Which examples a run sees: the validation carve and each epoch's order.

Pure NumPy functions of (seed, epoch, labels): every process computes the
same answer without talking to the others, and a resumed run recomputes
exactly the order an uninterrupted one used. No TensorFlow here.
"""

from __future__ import annotations

import numpy as np

from densenet_flax import config_keys

# Folded into the seeds so that the carve, the epoch permutations and the
# balanced draws are independent streams of the run's seed.
CARVE_SALT = 0x5EED_CA7E
SAMPLE_SALT = 0xBA1A_4CED
CLASS_SAMPLINGS = config_keys.CLASS_SAMPLINGS


def carve_validation(
  labels: np.ndarray, keys: np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
  """(train, validation) indices into `labels`: a seeded, stratified carve.

  Each class gives round(fraction * its count) examples to validation (none
  from a class of one example). The examples are ordered by `keys` (file
  names, or row numbers) before the seeded draw, so the carve depends on
  which examples there are, not on the order a dataset stores them in. The
  two index sets are disjoint, sorted, and cover every example.

  Args:
    labels: int [N], the class of each example.
    keys: [N], a unique, sortable name of each example (its file).
    fraction: the share of each class that goes to validation, in [0, 1).
    seed: the run's seed.
  """
  labels = np.asarray(labels)
  by_key = np.argsort(np.asarray(keys), kind='stable')
  validation = []
  for label in np.unique(labels):
    members = by_key[labels[by_key] == label]
    count = int(round(fraction * len(members))) if len(members) > 1 else 0
    rng = np.random.default_rng([seed, CARVE_SALT, int(label)])
    validation.append(rng.permutation(members)[:count])
  validation = np.sort(np.concatenate(validation)).astype(np.int64)
  train = np.setdiff1d(np.arange(len(labels)), validation)
  return train, validation


def class_weights(labels: np.ndarray, num_classes: int) -> np.ndarray:
  """Each example's draw weight 1 / (its class's count): [N] summing to 1."""
  counts = np.bincount(labels, minlength=num_classes)
  weights = 1.0 / counts[labels]
  return weights / weights.sum()


def epoch_order(
  labels: np.ndarray,
  num_classes: int,
  count: int,
  seed: int,
  epoch: int,
  class_sampling: str = 'none',
) -> np.ndarray:
  """The `count` example indices epoch `epoch` visits, in order.

  'none': the first `count` of a permutation of all examples (each example
  at most once; the rest wait for another epoch). 'balanced': `count` draws
  with replacement, each example weighted by 1 / its class's count, so every
  class is drawn equally often on average (the imbalanced-dataset sampler of
  the FER codebases).
  """
  if class_sampling == 'none':
    rng = np.random.default_rng([seed, epoch])
    return rng.permutation(len(labels))[:count]
  if class_sampling != 'balanced':
    raise ValueError(
      f'class_sampling={class_sampling!r}: expected one of {CLASS_SAMPLINGS}'
    )
  rng = np.random.default_rng([seed, epoch, SAMPLE_SALT])
  return rng.choice(
    len(labels), size=count, replace=True, p=class_weights(labels, num_classes)
  )
