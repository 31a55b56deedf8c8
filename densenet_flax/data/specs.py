"""What the code needs to know about each dataset, without touching TensorFlow.

Config validation, the model's class count and the normalisation all read
these, so a training run can check its config before loading any data.
"""

from __future__ import annotations

import dataclasses

from densenet_flax.data import fer_sources


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """A dataset as the input pipeline sees it.

  Attributes:
    name: TFDS name (this project's builders or the TFDS catalogue).
    num_classes: number of labels.
    channels: channels of the stored images.
    image_size: stored height = width, or None when sizes vary (ImageNet).
    splits: the split names.
    mean, std: per-channel normalisation on the [0, 1] scale; None means
      "computed from the training split" (small datasets without a standard).
    in_memory: small enough to hold decoded in host memory, which gives exact
      global shuffling and cheap exact restarts.
    class_names: label names in id order, or None to read them from TFDS.
  """

  name: str
  num_classes: int
  channels: int
  image_size: int | None
  splits: tuple[str, ...]
  mean: tuple[float, ...] | None = None
  std: tuple[float, ...] | None = None
  in_memory: bool = True
  class_names: tuple[str, ...] | None = None


DATASETS: dict[str, DatasetSpec] = {
  'digits': DatasetSpec(
    'digits',
    10,
    1,
    8,
    ('train', 'test'),
    class_names=tuple(str(i) for i in range(10)),
  ),
  'fer2013': DatasetSpec(
    'fer2013', 7, 1, 48, fer_sources.SPLITS, class_names=fer_sources.EMOTIONS
  ),
  'ferplus': DatasetSpec(
    'ferplus',
    8,
    1,
    48,
    fer_sources.SPLITS,
    class_names=fer_sources.FERPLUS_EMOTIONS,
  ),
  'cifar10': DatasetSpec(
    'cifar10',
    10,
    3,
    32,
    ('train', 'test'),
    mean=(0.4914, 0.4822, 0.4465),
    std=(0.2470, 0.2435, 0.2616),
  ),
  'cifar100': DatasetSpec(
    'cifar100',
    100,
    3,
    32,
    ('train', 'test'),
    mean=(0.5071, 0.4865, 0.4409),
    std=(0.2673, 0.2564, 0.2762),
  ),
  'imagenet2012': DatasetSpec(
    'imagenet2012',
    1000,
    3,
    None,
    ('train', 'validation'),
    mean=(0.485, 0.456, 0.406),
    std=(0.229, 0.224, 0.225),
    in_memory=False,
  ),
}


def get_spec(name: str) -> DatasetSpec:
  if name not in DATASETS:
    raise ValueError(
      f'Unknown dataset {name!r}; available: {", ".join(sorted(DATASETS))}'
    )
  return DATASETS[name]
