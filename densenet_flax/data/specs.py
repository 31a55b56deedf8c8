"""What the code needs to know about each dataset, without touching TensorFlow.

Config validation, the model's class count, the normalisation and the way
inference frames a face all read these, so a training run can check its
config before loading any data. `spec_for(config)` is the one entry point:
class folders take their classes from the run's config (or its root).
"""

from __future__ import annotations

import dataclasses
import os

from densenet_flax.data import affectnet
from densenet_flax.data import fer_sources
from densenet_flax.data import image_folder
from densenet_flax.data import rafdb

# ImageNet's per-channel statistics on the [0, 1] scale: what ImageNet
# weights expect, and what the RAF-DB and AffectNet recipes normalise with.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The split carved from the training split where a dataset stores none
# (config.validation_fraction).
VALIDATION = 'validation'


@dataclasses.dataclass(frozen=True)
class FaceFraming:
  """How a dataset's images frame a face, so inference crops alike.

  margin: the crop around a detected face box on each side, as a fraction
  of the box's size; align: whether the eyes are levelled first.
  """

  margin: float
  align: bool


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
  random_access: bool = False
  framing: FaceFraming = FaceFraming(margin=0.1, align=True)

  @property
  def indexable(self) -> bool:
    """Any example can be read by its index (in memory, or random access)."""
    return self.in_memory or self.random_access


def _face_dataset(name, num_classes, image_size, splits, class_names, framing):
  """An RGB face dataset read by index, normalised as ImageNet weights want."""
  return DatasetSpec(
    name,
    num_classes,
    3,
    image_size,
    splits,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    in_memory=False,
    class_names=class_names,
    random_access=True,
    framing=framing,
  )


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
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    in_memory=False,
  ),
  # RAF-DB's aligned faces: levelled eyes, the face filling most of the
  # 100x100 frame with some room around it.
  'rafdb': _face_dataset(
    'rafdb',
    7,
    rafdb.IMAGE_SIZE,
    rafdb.SPLITS,
    rafdb.CLASS_NAMES,
    FaceFraming(margin=0.15, align=True),
  ),
  # AffectNet's faces are its annotated boxes, cropped as they are.
  **{
    f'affectnet{n}': _face_dataset(
      f'affectnet{n}',
      n,
      affectnet.IMAGE_SIZE,
      affectnet.SPLITS,
      affectnet.class_names(n),
      FaceFraming(margin=0.0, align=False),
    )
    for n in affectnet.CLASS_COUNTS
  },
  # Class folders: classes and splits from the folders (spec_for), images
  # of any size; photos, normalised as ImageNet weights want.
  'image_folder': DatasetSpec(
    'image_folder',
    0,
    3,
    None,
    (),
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    in_memory=False,
    random_access=True,
  ),
}
# The datasets whose classes come from the data, not from this table.
FOLDER_DATASETS = ('image_folder',)


def get_spec(name: str) -> DatasetSpec:
  """The fixed facts of dataset `name` (class folders: see spec_for)."""
  if name not in DATASETS:
    raise ValueError(
      f'Unknown dataset {name!r}; available: {", ".join(sorted(DATASETS))}'
    )
  return DATASETS[name]


def spec_for(config) -> DatasetSpec:
  """The spec of the run's dataset (config.dataset).

  Class folders take their classes from config.class_names, which a run
  records in its config.json, or else from config.manual_dir, the root,
  listed without reading an image; their splits come from the root when it
  is there.
  """
  spec = get_spec(config.dataset)
  if spec.name not in FOLDER_DATASETS:
    return spec
  names = tuple(config.get('class_names') or ())
  splits = ()
  root = config.get('manual_dir')
  # A run that recorded its classes restores without its root (inference
  # and export on another machine).
  if root and (not names or os.path.isdir(root)):
    layout = image_folder.find_release(root)
    names, splits = names or layout.class_names, layout.splits
  if not names:
    raise ValueError(
      f'config.dataset={spec.name!r} needs its root as config.manual_dir '
      f'(or the classes as config.class_names)\n\n'
      f'{image_folder.MANUAL_DOWNLOAD_INSTRUCTIONS}'
    )
  return dataclasses.replace(
    spec, num_classes=len(names), class_names=names, splits=splits
  )


def record_class_names(config):
  """`config`, or for class folders a copy naming their classes.

  A run records them in its config.json, so inference and export know the
  classes without the root.
  """
  if config.dataset not in FOLDER_DATASETS or config.get('class_names'):
    return config
  import ml_collections

  config = ml_collections.ConfigDict(config.to_dict())
  config.class_names = spec_for(config).class_names
  return config
