"""Checks a run's config before any data is read or anything is compiled.

Each check names the key, its value and what was expected. They live here,
not in config.py, because they need the models, the dataset specs and the
weight sources, which config.py (imported by all of them) must not import.
"""

from __future__ import annotations

import ml_collections

from densenet_flax import models
from densenet_flax import optim
from densenet_flax import pretrained
from densenet_flax.config_keys import (
  CLASS_SAMPLINGS,
  CLASS_WEIGHTINGS,
  CROPS,
  HALF_DTYPES,
  LABEL_MODES,
  LOSS_SCALINGS,
  OPTIMIZERS,
  PARALLELISMS,
  RNG_IMPLS,
  SCHEDULES,
  SELECT_METRICS,
  SELECT_ON,
  TTAS,
  VOTE_DATASETS,
  WEIGHT_DECAY_MODES,
  WORKDIR_LOCKS,
)
from densenet_flax.data import specs


def _fail(key: str, value, expected: str):
  raise ValueError(f'config.{key}={value!r}: expected {expected}')


def _one_of(config, key: str, choices) -> None:
  value = config
  for part in key.split('.'):
    value = value[part]
  if value not in choices:
    _fail(key, value, f'one of {", ".join(map(repr, choices))}')


def validate(
  config: ml_collections.ConfigDict, num_devices: int | None = None
) -> None:
  """Raises ValueError naming the first bad key. Reads no data, compiles nothing.

  With `num_devices` (all processes' devices), also checks that the batch
  sizes divide over them; without it, nothing here touches JAX's devices, so
  a run can check its config before `jax.distributed.initialize`.
  """
  if config.model not in models.PRESETS:
    _fail(
      'model', config.model, f'a preset: {", ".join(sorted(models.PRESETS))}'
    )
  unknown = set(config.model_overrides) - set(models.MODEL_FIELDS)
  if unknown:
    _fail(
      'model_overrides',
      sorted(unknown),
      f'DenseNet fields: {", ".join(models.MODEL_FIELDS)}',
    )
  if config.dataset not in specs.DATASETS:
    _fail(
      'dataset', config.dataset, f'one of {", ".join(sorted(specs.DATASETS))}'
    )
  if config.class_names and config.dataset not in specs.FOLDER_DATASETS:
    _fail(
      'class_names',
      config.class_names,
      f'() for {config.dataset} (its classes are fixed); only '
      f'{", ".join(specs.FOLDER_DATASETS)} takes class names',
    )
  spec = specs.spec_for(config)  # class folders: their root is listed
  _validate_splits(config, spec)
  for key, choices in {
    'class_sampling': CLASS_SAMPLINGS,
    'optimizer': OPTIMIZERS,
    'schedule': SCHEDULES,
    'weight_decay_mode': WEIGHT_DECAY_MODES,
    'class_weighting': CLASS_WEIGHTINGS,
    'augment.crop': CROPS,
    'half_precision_dtype': HALF_DTYPES,
    'loss_scaling': LOSS_SCALINGS,
    'test_tta': TTAS,
    'rng_impl': RNG_IMPLS,
    'parallelism': PARALLELISMS,
    'workdir_lock': WORKDIR_LOCKS,
  }.items():
    _one_of(config, key, choices)
  for key in (
    'learning_rate',
    'num_epochs',
    'batch_size',
    'eval_batch_size',
    'image_size',
    'log_every_steps',
    'checkpoint_every_steps',
    'keep_checkpoints',
    'eval_every_epochs',
  ):
    if not config[key] > 0:
      _fail(key, config[key], 'a positive number')
  for key in (
    'weight_decay',
    'label_smoothing',
    'mixup_alpha',
    'grad_clip_norm',
    'warmup_epochs',
    'lr_batch_reference',
    'stop_after_steps',
    'wait_for_lock_s',
  ):
    if config[key] < 0:
      _fail(key, config[key], 'a number >= 0')
  if not config.workdir_lock_stale_s > 0:
    _fail(
      'workdir_lock_stale_s',
      config.workdir_lock_stale_s,
      'a positive number of seconds',
    )
  if config.schedule == 'cosine' and config.warmup_epochs >= config.num_epochs:
    _fail(
      'warmup_epochs',
      config.warmup_epochs,
      f'fewer than num_epochs={config.num_epochs}: the cosine decay '
      f'follows the warmup',
    )
  if config.select_metric not in SELECT_METRICS:
    _fail(
      'select_metric',
      config.select_metric,
      f'one of {", ".join(SELECT_METRICS)} (higher is better)',
    )
  if config.class_sampling == 'balanced' and not spec.indexable:
    _fail(
      'class_sampling',
      config.class_sampling,
      f"'none' for {spec.name}: balanced draws need every example's label "
      f'up front (datasets held in memory or read by index)',
    )
  _validate_augment(config)
  if not 0 <= config.label_smoothing < 1:
    _fail('label_smoothing', config.label_smoothing, 'a number in [0, 1)')
  if list(config.lr_boundaries) != sorted(config.lr_boundaries) or any(
    not 0 < b < 1 for b in config.lr_boundaries
  ):
    _fail(
      'lr_boundaries',
      config.lr_boundaries,
      'increasing fractions of training, each in (0, 1)',
    )
  if config.channels not in (1, 3) or (
    config.channels == 1 and spec.channels == 3
  ):
    _fail(
      'channels',
      config.channels,
      f'1 or 3, and not fewer than the {spec.channels} of {spec.name}',
    )
  _validate_fine_tuning(config)
  _validate_label_mode(config)
  _validate_distributed(config)
  if num_devices is not None:
    validate_devices(config, num_devices)
  if (
    spec.image_size is None
    and config.augment.crop not in ('resized',)
    and not config.augment.resize
  ):
    _fail(
      'augment.crop',
      config.augment.crop,
      f"'resized' (or augment.resize > 0): {spec.name} images vary in size",
    )
  stored = config.augment.resize or spec.image_size
  if config.augment.crop == 'random' and stored and stored < config.image_size:
    _fail(
      'image_size',
      config.image_size,
      f'at most the {stored}px images that augment.crop="random" crops',
    )
  model = models.create_model(
    config.model, num_classes=spec.num_classes, **config.model_overrides
  )
  if config.image_size < model.min_input_size:
    _fail(
      'image_size',
      config.image_size,
      f'at least {model.min_input_size} for {config.model}',
    )


def _carvable(spec) -> bool:
  """Whether a 'validation' split can be carved out of the training split."""
  return (
    spec.indexable
    and spec.name not in VOTE_DATASETS
    and specs.VALIDATION not in spec.splits
  )


def carves_validation(config, spec) -> bool:
  """Whether the run carves 'validation' out of its training split: its
  dataset (`spec`) stores none and can, and its eval_split or test_split
  names it."""
  return _carvable(spec) and specs.VALIDATION in (
    config.get('eval_split'),
    config.get('test_split'),
  )


def available_splits(config) -> tuple[str, ...]:
  """The splits a run can evaluate: its dataset's, and 'validation' where
  the run carves one."""
  spec = specs.spec_for(config)
  carved = carves_validation(config, spec)
  return spec.splits + ((specs.VALIDATION,) if carved else ())


def _validate_splits(config, spec) -> None:
  """Stored splits, TFDS slices of them, or a carved 'validation'; checkpoint
  selection on the test split only when asked for (select_on='test')."""
  carvable = _carvable(spec)
  splits = spec.splits + ((specs.VALIDATION,) if carvable else ())
  for key in ('train_split', 'eval_split', 'test_split'):
    if key == 'test_split' and not config[key]:
      continue
    # TFDS slicing is allowed: 'train[:90%]' is a slice of 'train'.
    if config[key].split('[')[0] not in splits:
      _fail(
        key,
        config[key],
        f'a split of {spec.name} (or a TFDS slice of one)'
        + (
          f', or {specs.VALIDATION!r} carved from train_split'
          if carvable
          else ''
        )
        + f': {", ".join(spec.splits)}',
      )
  if config.train_split == specs.VALIDATION:
    _fail('train_split', config.train_split, 'a split to train on')
  if carvable and not 0 < config.validation_fraction < 1:
    _fail(
      'validation_fraction',
      config.validation_fraction,
      f'a fraction in (0, 1) of each class of train_split, carved out as '
      f'{specs.VALIDATION!r}',
    )
  _one_of(config, 'select_on', SELECT_ON)
  if config.select_on == 'test' and not config.test_split:
    _fail(
      'select_on', config.select_on, "'validation' unless test_split is set"
    )
  if (
    config.select_on == 'validation'
    and config.test_split
    and config.eval_split == config.test_split
  ):
    _fail(
      'eval_split',
      config.eval_split,
      f'a split other than test_split={config.test_split!r}: it selects the '
      f"'best' checkpoint, which would flatter the test figure. Use "
      + (f'{specs.VALIDATION!r} (carved from train), ' if carvable else '')
      + 'or pass --config.select_on=test to select on the test split '
      'knowingly, as the FER papers do (reports then say so)',
    )


def _validate_augment(config) -> None:
  a = config.augment
  if not (isinstance(a.rand_augment_ops, int) and a.rand_augment_ops >= 0):
    _fail(
      'augment.rand_augment_ops', a.rand_augment_ops, 'an int >= 0 (0 = off)'
    )
  if not 0 <= a.rand_augment_magnitude <= 30:
    _fail(
      'augment.rand_augment_magnitude',
      a.rand_augment_magnitude,
      "a number in [0, 30] (torchvision's 31 magnitude bins)",
    )
  if not 0 <= a.erasing <= 1:
    _fail('augment.erasing', a.erasing, 'a probability in [0, 1] (0 = off)')
  low, high = (tuple(a.erasing_scale) + (None, None))[:2]
  if len(a.erasing_scale) != 2 or not 0 < low <= high < 1:
    _fail(
      'augment.erasing_scale',
      a.erasing_scale,
      '(low, high) with 0 < low <= high < 1: the erased fraction of the image',
    )


def _validate_fine_tuning(config) -> None:
  if config.init_from and config.init_from_keras:
    _fail(
      'init_from_keras',
      config.init_from_keras,
      "'' when config.init_from is set (init_from_keras is deprecated)",
    )
  if config.init_from:
    pretrained.parse(config.init_from)  # raises naming the key
  if config.init_from_keras not in ('', *pretrained.KERAS_NAMES):
    _fail(
      'init_from_keras',
      config.init_from_keras,
      f'one of {", ".join(pretrained.KERAS_NAMES)}',
    )
  stages = models.stage_names(optim.num_blocks(config))
  if config.freeze and config.freeze not in stages[:-1]:
    _fail(
      'freeze',
      config.freeze,
      f"'' or a stage of {config.model}: {', '.join(stages[:-1])}",
    )
  if config.freeze_batch_stats and not config.freeze:
    _fail(
      'freeze_batch_stats',
      config.freeze_batch_stats,
      'False unless config.freeze names a stage',
    )
  if not config.head_lr_multiplier > 0:
    _fail('head_lr_multiplier', config.head_lr_multiplier, 'a number > 0')
  if not 0 < config.layer_lr_decay <= 1:
    _fail('layer_lr_decay', config.layer_lr_decay, 'a number in (0, 1]')
  if not 0 <= config.ema_decay < 1:
    _fail('ema_decay', config.ema_decay, 'a number in [0, 1) (0 = no EMA)')


def _validate_label_mode(config) -> None:
  _one_of(config, 'label_mode', LABEL_MODES)
  if config.label_mode != 'majority' and config.dataset not in VOTE_DATASETS:
    _fail(
      'label_mode',
      config.label_mode,
      f"'majority' for dataset {config.dataset!r}; the other modes need "
      f'crowd votes ({", ".join(VOTE_DATASETS)})',
    )


def _validate_distributed(config) -> None:
  if not config.distributed:
    for key, unset in (
      ('coordinator_address', ''),
      ('num_processes', 0),
      ('process_id', -1),
    ):
      if config[key] != unset:
        _fail(key, config[key], f'{unset!r} unless config.distributed=True')
    return
  if config.num_processes < 0:
    _fail('num_processes', config.num_processes, 'a count >= 1 (0 = detect)')
  if config.process_id < -1 or (
    config.num_processes and config.process_id >= config.num_processes
  ):
    _fail(
      'process_id',
      config.process_id,
      f'an id in [0, num_processes) (-1 = detect); num_processes='
      f'{config.num_processes}',
    )
  if not config.distributed_timeout_s > 0:
    _fail(
      'distributed_timeout_s',
      config.distributed_timeout_s,
      'a positive number of seconds',
    )


def validate_devices(
  config: ml_collections.ConfigDict, num_devices: int
) -> None:
  """The global batch sizes divide over all devices of all processes."""
  for key in ('batch_size', 'eval_batch_size'):
    if config[key] % num_devices:
      _fail(key, config[key], f'a multiple of the {num_devices} devices')
