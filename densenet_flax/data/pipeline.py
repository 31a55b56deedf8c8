"""The tf.data input pipeline: per-process shards, augmentation, device batches.

Batches are dicts of NumPy arrays shaped for the data-parallel step:
  image  [local_devices, per_device_batch, H, W, C] float32 (normalised)
  label  [local_devices, per_device_batch] int32
  target [local_devices, per_device_batch, num_classes] float32 (training
         only, and only with config.label_mode other than 'majority')
  mask   [local_devices, per_device_batch] bool (evaluation only)

FER+ label modes (config.label_mode, see fer_sources.ferplus_target): the
training split keeps the rows that train in the mode; `target` is the
processed vote distribution ('crossentropy', 'multi_target') or a one-hot
label drawn from it ('probability'), and `label` is its top class (the drawn
one). Every evaluated split keeps only the majority rows, with their majority
labels, whatever the mode (as the FER+ paper evaluates).

Training is deterministic and restartable: epoch e is a permutation drawn from
(seed, e), and each example's augmentation is seeded by (seed, e, position),
so `train_batches(start_step=s)` yields exactly the batches an uninterrupted
run would have yielded from step s on, without replaying earlier steps.

How a global batch of B examples is split over N processes: for datasets held
in memory (digits, FER2013, FER+, CIFAR) every process draws the same epoch
permutation of the whole training split, and process p takes rows
[p * B/N, (p + 1) * B/N) of each global batch, with augmentations seeded by
the global position. So N processes of M devices train on exactly the batches
one process of N*M devices would (parallel.py says how rows map to devices).
File-based datasets (ImageNet) are read as per-process file shards
(`tfds.split_for_jax_process`), each shuffled on its own: the global batch is
the union of the processes' local batches, as in the Flax ImageNet example.

Evaluation visits every example of a split exactly once whatever the batch
size: the last batch is padded and `mask` marks the real examples (the Flax
ImageNet example drops that tail). All processes yield the same number of
batches, so collective ops in the eval step line up.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from densenet_flax import config_checks
from densenet_flax.data import augment
from densenet_flax.data import erasing
from densenet_flax.data import fer_sources
from densenet_flax.data import indexed
from densenet_flax.data import order
from densenet_flax.data import rand_augment
from densenet_flax.data import specs
from densenet_flax.datasets import prepare

Batch = dict[str, np.ndarray]
AUTOTUNE = tf.data.AUTOTUNE
TTA_MODES = (None, 'ten_crop')
# Folded into an example's augmentation seed for its 'probability' label, so
# the draw is independent of the augmentation.
LABEL_SEED_SALT = 0x1AB31

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class _Examples:
  """A split's used examples, addressed by position 0..N-1.

  labels: int [N]; keys: [N] unique names that order them for the
  validation carve (file names, or row numbers); read(positions): a
  tf.data.Dataset of (image, label[, target]) at those positions, in order.
  """

  labels: np.ndarray
  keys: np.ndarray
  read: Callable[[np.ndarray], tf.data.Dataset]

  def subset(self, positions: np.ndarray) -> _Examples:
    return _Examples(
      labels=self.labels[positions],
      keys=self.keys[positions],
      read=lambda p: self.read(positions[p]),
    )


class InputPipeline:
  """Training and evaluation batches of one dataset, for this process.

  Args:
    config: the run's ConfigDict (dataset, data_dir, manual_dir, batch_size,
      eval_batch_size, seed, image_size, channels, augment.*).
    num_devices: local devices the batch is split over (default: all).
    process_index, process_count: this host's place among the hosts.
  """

  def __init__(
    self,
    config,
    *,
    num_devices: int | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
  ):
    import jax  # only for the device/process topology defaults

    self.config = config
    self.spec = specs.spec_for(config)
    self.num_devices = num_devices or jax.local_device_count()
    self.process_index = (
      jax.process_index() if process_index is None else process_index
    )
    self.process_count = process_count or jax.process_count()
    # The batch sizes divide over every process's devices (the config's
    # check, for callers that build a pipeline on their own).
    config_checks.validate_devices(
      config, self.num_devices * self.process_count
    )
    self.local_batch = config.batch_size // self.process_count
    self.local_eval_batch = config.eval_batch_size // self.process_count
    self.label_mode = config.get('label_mode', 'majority')
    self.builder = prepare.load_builder(
      self.spec.name,
      data_dir=config.get('data_dir') or None,
      manual_dir=config.get('manual_dir') or None,
      skip_unreadable=config.get('skip_unreadable_images', False),
    )
    skipped = self.skipped_images()
    if skipped:
      log.warning(
        '%s was built without these examples (by rule or '
        'skip_unreadable_images): %s; first files: %s',
        self.spec.name,
        skipped['counts'],
        skipped.get('first_files', {}),
      )
    self.mean, self.std = self._normalization()

  # --- sizes and names --------------------------------------------------------

  @property
  def _has_votes(self) -> bool:
    """FER+: rows carry votes; which of them are used depends on the mode."""
    return self.spec.name == 'ferplus'

  def split_size(self, split: str, *, train: bool = False) -> int:
    """Examples of the whole split (all processes) that are used.

    FER+: the rows that train in config.label_mode (train=True), else the
    majority rows (evaluation). A carved 'validation' and the training split
    it was carved from count what each holds.
    """
    if self.spec.indexable:
      return len(self._examples(split, train=train).labels)
    return self.builder.info.splits[split].num_examples

  @property
  def class_names(self) -> list[str]:
    if self.spec.class_names:
      return list(self.spec.class_names)
    return list(self.builder.info.features['label'].names)

  @property
  def train_split(self) -> str:
    return self.config.get('train_split', 'train')

  @functools.cached_property
  def _process_train_split(self) -> str:
    return tfds.split_for_jax_process(
      self.train_split,
      process_index=self.process_index,
      process_count=self.process_count,
      drop_remainder=True,
    )

  @property
  def steps_per_epoch(self) -> int:
    """Full batches per epoch (the remainder is left out, reshuffled each epoch)."""
    if self.spec.indexable:  # global batches of the whole split
      size, batch, whose = (
        self.split_size(self.train_split, train=True),
        self.config.batch_size,
        'the',
      )
    else:  # local batches of this process's file shard
      size, batch, whose = (
        self.builder.info.splits[self._process_train_split].num_examples,
        self.local_batch,
        "this process's",
      )
    steps = size // batch
    if steps == 0:
      raise ValueError(
        f'config.batch_size={self.config.batch_size} is larger than '
        f'{whose} {size} training examples'
      )
    return steps

  def skipped_images(self) -> dict | None:
    """What the dataset's build skipped (config.skip_unreadable_images):
    counts by split and reason and the first files; None when nothing was
    or the dataset records no such thing."""
    from densenet_flax.datasets import image_builder

    try:
      skipped = image_builder.read_skipped(self.builder.info)
    except KeyError:
      return None
    counts = skipped.get('counts', {})
    if not any(n for reasons in counts.values() for n in reasons.values()):
      return None
    return skipped

  # --- examples by index (held in memory, or read by index) ------------------

  def _rows(self, split: str, *, train: bool = False) -> dict[str, np.ndarray]:
    """image, label (and FER+ soft modes: target) of the used rows of `split`.

    FER+: train=True gives the rows that train in config.label_mode, labelled
    by their target's top class; train=False the majority rows (evaluation).
    """
    if not self._has_votes:
      return _load_rows(self.builder, split, None)
    return _load_rows(
      self.builder, split, self.label_mode if train else 'majority'
    )

  @property
  def _carves_validation(self) -> bool:
    return config_checks.carves_validation(self.config, self.spec)

  @functools.cache
  def _carve(self) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) positions within the stored training split."""
    whole = self._stored_examples(self.train_split, train=False)
    train, validation = order.carve_validation(
      whole.labels,
      whole.keys,
      self.config.get('validation_fraction', 0.1),
      self.config.seed,
    )
    if not len(validation):
      raise ValueError(
        f'config.validation_fraction={self.config.validation_fraction} '
        f'carves no example out of the {len(whole.labels)} of '
        f'{self.spec.name}:{self.train_split} (round(fraction x count) is 0 '
        f'for every class): expected a fraction that leaves some examples '
        f'for {specs.VALIDATION!r}'
      )
    log.info(
      '%s: %d of the %d examples of %s carved out as %r (validation_fraction'
      ' %s, stratified, seed %d)',
      self.spec.name,
      len(validation),
      len(whole.labels),
      self.train_split,
      specs.VALIDATION,
      self.config.get('validation_fraction', 0.1),
      self.config.seed,
    )
    return train, validation

  def _examples(self, split: str, *, train: bool = False) -> _Examples:
    """The used examples of `split`, a carved validation included."""
    if not self._carves_validation:
      return self._stored_examples(split, train=train)
    if split == specs.VALIDATION:
      return self._stored_examples(self.train_split).subset(self._carve()[1])
    if split == self.train_split:
      whole = self._stored_examples(split, train=train)
      return whole.subset(self._carve()[0])
    return self._stored_examples(split, train=train)

  def _stored_examples(self, split: str, *, train: bool = False) -> _Examples:
    if self.spec.random_access:
      source = indexed.open_split(self.builder, split)
      return _Examples(
        labels=source.labels,
        keys=source.files,
        read=source.dataset,
      )
    rows = self._rows(split, train=train)
    columns = [rows['image'], rows['label']]
    if 'target' in rows:
      columns.append(rows['target'])

    def read(indices):
      return tf.data.Dataset.from_tensor_slices(
        tuple(column[indices] for column in columns)
      )

    return _Examples(
      labels=rows['label'], keys=np.arange(len(rows['label'])), read=read
    )

  def _arrays(
    self, split: str, *, train: bool = False
  ) -> tuple[np.ndarray, np.ndarray]:
    rows = self._rows(split, train=train)
    return rows['image'], rows['label']

  def train_label_counts(self) -> np.ndarray:
    """Examples per class in the whole training split ([num_classes]).

    FER+: of the rows that train in config.label_mode, by their target's top
    class (the first on a tie), as microsoft/FERPlus counts them.
    """
    if not self.spec.indexable:
      raise ValueError(
        f'Label counts need the labels in memory; '
        f'{self.spec.name} is read from files'
      )
    labels = self._examples(self.train_split, train=True).labels
    return np.bincount(labels, minlength=self.spec.num_classes)

  def _normalization(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
    if self.spec.mean is not None:
      return self.spec.mean, self.spec.std
    # The whole split's training rows, every host.
    images, _ = self._arrays(self.train_split, train=True)
    pixels = images.reshape(-1, images.shape[-1]).astype(np.float64) / 255.0
    mean, std = pixels.mean(axis=0), pixels.std(axis=0)
    log.info(
      '%s: mean %s, std %s (computed from %d training images)',
      self.spec.name,
      mean,
      std,
      len(images),
    )
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)

  # --- preprocessing -----------------------------------------------------------

  def _augment_kwargs(self) -> dict[str, Any]:
    a = self.config.augment
    return dict(
      image_size=self.config.image_size, crop=a.crop, resize=a.get('resize', 0)
    )

  def _finish(self, image: tf.Tensor) -> tf.Tensor:
    return augment.normalize(image, self.mean, self.std, self.config.channels)

  def _decode(self, image: tf.Tensor) -> tf.Tensor:
    if image.dtype == tf.string:
      image = tf.io.decode_image(
        image, channels=self.spec.channels, expand_animations=False
      )
    return image

  def _epoch_seed(self, epoch: int) -> int:
    """One seed per (run seed, epoch): the file order and the augmentations."""
    return self.config.seed * 1_000_003 + epoch

  def _train_map(self, epoch: int):
    a = self.config.augment
    kwargs = dict(
      self._augment_kwargs(),
      crop_padding=a.get('crop_padding', 0),
      flip=a.get('flip', False),
      rotation=a.get('rotation', 0.0),
      geometric_probability=a.get('geometric_probability', 1.0),
    )
    epoch_seed = self._epoch_seed(epoch)
    # Positions of examples read by index are global already; file shards
    # count from 0 each.
    process_offset = 0 if self.spec.indexable else self.process_index << 32
    draw = self.label_mode == 'probability'
    rand_ops, erase = a.get('rand_augment_ops', 0), a.get('erasing', 0.0)

    def fn(position, image, label, target=None):
      seed = tf.stack(
        [tf.constant(epoch_seed, tf.int64), position + process_offset]
      )
      image = augment.train_image(self._decode(image), seed, **kwargs)
      if rand_ops:  # on 0-255 pixels, as torchvision's on images
        image = rand_augment.rand_augment(
          image,
          seed,
          num_ops=rand_ops,
          magnitude=a.get('rand_augment_magnitude', 9),
        )
      image = self._finish(image)
      if erase:  # after normalisation, as torchvision's: 0 is the mean
        image = erasing.random_erasing(
          image,
          seed,
          probability=erase,
          scale=tuple(a.get('erasing_scale', (0.02, 0.33))),
        )
      out = {'image': image, 'label': tf.cast(label, tf.int32)}
      if target is not None:  # FER+ soft modes
        target = tf.cast(target, tf.float32)
        if draw:  # one label from the distribution: (seed, epoch, position)
          label_seed = tf.random.experimental.stateless_fold_in(
            seed, LABEL_SEED_SALT
          )
          drawn = tf.random.stateless_categorical(
            tf.math.log(target)[None], 1, label_seed, dtype=tf.int32
          )[0, 0]
          target = tf.one_hot(drawn, self.spec.num_classes, dtype=tf.float32)
          out['label'] = drawn
        out['target'] = target
      return out

    return fn

  # --- training -------------------------------------------------------------------

  def _epoch_source(self, epoch: int, skip: int) -> tf.data.Dataset:
    """(position, image, label[, target]) of this process's share of one epoch.

    In its order, from its `skip`-th example on. `target` only for the FER+
    soft label modes.
    """
    if self.spec.indexable:
      examples = self._examples(self.train_split, train=True)
      steps, batch = self.steps_per_epoch, self.config.batch_size
      chosen = order.epoch_order(
        examples.labels,
        self.spec.num_classes,
        steps * batch,
        self.config.seed,
        epoch,
        self.config.get('class_sampling', 'none'),
      )
      # Global positions of this process's rows of each global batch.
      positions = np.arange(steps * batch, dtype=np.int64).reshape(
        steps, self.process_count, self.local_batch
      )[:, self.process_index]
      positions = positions.reshape(-1)[skip:]
      ds = tf.data.Dataset.zip(
        tf.data.Dataset.from_tensor_slices(positions),
        examples.read(chosen[positions]),
      )
      return ds.map(lambda position, columns: (position, *columns))
    count = self.steps_per_epoch * self.local_batch
    epoch_seed = self._epoch_seed(epoch)
    ds = self.builder.as_dataset(
      split=self._process_train_split,
      shuffle_files=True,
      decoders={'image': tfds.decode.SkipDecoding()},
      read_config=tfds.ReadConfig(shuffle_seed=epoch_seed),
    )
    ds = ds.shuffle(
      self.config.get('shuffle_buffer', 16 * 1024), seed=epoch_seed
    )
    ds = ds.map(lambda ex: (ex['image'], ex['label'])).take(count)
    return ds.enumerate().skip(skip).map(lambda i, x: (i, *x))

  def _epoch_batches(self, epoch: int, skip_batches: int) -> tf.data.Dataset:
    ds = self._epoch_source(epoch, skip_batches * self.local_batch)
    ds = ds.map(self._train_map(epoch), num_parallel_calls=AUTOTUNE)
    ds = ds.batch(self.local_batch, drop_remainder=True)
    return ds.prefetch(AUTOTUNE)

  def train_batches(self, start_step: int = 0) -> Iterator[Batch]:
    """Endless training batches, beginning with the batch of step `start_step`."""
    epoch, skip = divmod(start_step, self.steps_per_epoch)
    while True:
      for batch in self._epoch_batches(epoch, skip).as_numpy_iterator():
        yield self._shard(batch)
      epoch, skip = epoch + 1, 0

  # --- evaluation -----------------------------------------------------------------

  def num_eval_batches(self, split: str) -> int:
    """Batches every process yields for `split` (its largest shard, padded)."""
    largest_shard = math.ceil(self.split_size(split) / self.process_count)
    return max(1, math.ceil(largest_shard / self.local_eval_batch))

  def eval_batches(self, split: str, tta: str | None = None) -> Iterator[Batch]:
    """Each example of this process's shard once, padded; `mask` marks real ones.

    With tta='ten_crop', `image` is [devices, batch, 10, H, W, C].
    """
    if tta not in TTA_MODES:
      raise ValueError(f'tta must be one of {TTA_MODES}; got {tta!r}')
    if tta and self.config.augment.crop not in ('random', 'resized'):
      raise ValueError(
        f'ten_crop needs crops smaller than the image (config.augment.crop '
        f'"random" or "resized"); got {self.config.augment.crop!r}'
      )
    if self.spec.indexable:  # this process's share of the used examples
      examples = self._examples(split)
      start, end = _even_share(
        len(examples.labels), self.process_count, self.process_index
      )
      ds = examples.read(np.arange(start, end)).map(
        lambda image, label, *target: (image, label)
      )
    else:
      shard = tfds.even_splits(
        split, n=self.process_count, drop_remainder=False
      )[self.process_index]
      ds = self.builder.as_dataset(
        split=shard,
        shuffle_files=False,
        decoders={'image': tfds.decode.SkipDecoding()},
      )
      ds = ds.map(lambda ex: (ex['image'], ex['label']))
    crop_fn = augment.ten_crop if tta else augment.eval_image
    kwargs = self._augment_kwargs()

    def fn(image, label):
      image = crop_fn(self._decode(image), **kwargs)
      return {'image': self._finish(image), 'label': tf.cast(label, tf.int32)}

    ds = ds.map(fn, num_parallel_calls=AUTOTUNE)
    ds = ds.batch(self.local_eval_batch).prefetch(AUTOTUNE)
    produced = 0
    for batch in ds.as_numpy_iterator():
      produced += 1
      yield self._shard(_pad(batch, self.local_eval_batch))
    # Shards of a split differ by at most one example; every process yields
    # the same number of batches, padding with fully masked ones.
    empty = {
      k: np.zeros((0, *s.shape[1:]), s.dtype.as_numpy_dtype)
      for k, s in ds.element_spec.items()
    }
    for _ in range(produced, self.num_eval_batches(split)):
      yield self._shard(_pad(empty, self.local_eval_batch))

  # --- layout ---------------------------------------------------------------------

  def _shard(self, batch: Batch) -> Batch:
    """[local_batch, ...] -> [devices, local_batch / devices, ...]."""
    return {
      k: v.reshape(self.num_devices, -1, *v.shape[1:]) for k, v in batch.items()
    }


def _pad(batch: Batch, size: int) -> Batch:
  """Pads to `size` examples with zeros and adds `mask` (True = real)."""
  real = len(batch['label'])
  out = {
    k: np.concatenate([v, np.zeros((size - real, *v.shape[1:]), v.dtype)])
    for k, v in batch.items()
  }
  out['mask'] = np.arange(size) < real
  return out


def _even_share(size: int, count: int, index: int) -> tuple[int, int]:
  """[start, end) of part `index` of `count`, as tfds.even_splits cuts."""
  per, extra = divmod(size, count)
  return (
    per * index + min(index, extra),
    per * (index + 1) + min(index + 1, extra),
  )


def _load_arrays(builder, split: str) -> dict[str, np.ndarray]:
  """A whole split as arrays of every feature (image uint8 [N, H, W, C],
  label int64 [N], ...), in stored order."""
  return tfds.as_numpy(
    builder.as_dataset(split=split, batch_size=-1, shuffle_files=False)
  )


@functools.lru_cache(maxsize=8)
def _load_rows(
  builder, split: str, label_mode: str | None
) -> dict[str, np.ndarray]:
  """The used rows of a split: image, label and, for FER+ soft modes, target.

  label_mode None: every row (datasets without votes). FER+ 'majority': the
  rows with a majority label. The other modes: the rows that train in the
  mode (`fer_sources.ferplus_target`), target [N, 8] float32 its processed
  vote distribution and label its top class.
  """
  data = _load_arrays(builder, split)
  if label_mode is None:
    return {'image': data['image'], 'label': data['label']}
  if label_mode == 'majority':
    keep = data['majority'].astype(bool)
    return {'image': data['image'][keep], 'label': data['label'][keep]}
  targets = [fer_sources.ferplus_target(v, label_mode) for v in data['votes']]
  keep = np.array([t is not None for t in targets], bool)
  target = np.array([t for t in targets if t is not None], np.float32).reshape(
    -1, len(fer_sources.FERPLUS_EMOTIONS)
  )
  return {
    'image': data['image'][keep],
    'label': np.argmax(target, axis=-1).astype(np.int64),
    'target': target,
  }
