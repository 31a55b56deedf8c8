"""What a training workdir holds, and how a run is rebuilt from it.

  workdir/config.json     the run's full config (written by process 0)
  workdir/normalization.json  the per-channel mean/std its inputs were
                          normalised with (computed from the training split
                          for datasets without standard values)
  workdir/checkpoints/    Orbax checkpoints (checkpointing.Checkpoints)

Training, evaluation and inference all build the model, the input shape and
the checkpoints of a run through these functions, so they cannot drift apart.
`restore_variables` gives a checkpoint's params and BN statistics without
building an optimizer. Nothing here imports TensorFlow.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from densenet_flax import atomic
from densenet_flax import checkpointing
from densenet_flax import config as config_lib
from densenet_flax import models
from densenet_flax.data import specs

CONFIG_FILE = 'config.json'
NORMALIZATION_FILE = 'normalization.json'


def save_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  atomic.write_text(
    os.path.join(workdir, CONFIG_FILE), config.to_json(indent=2)
  )


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The run's config; keys added to the project since it ran get defaults."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(
      f'{path} not found: is {workdir} a training workdir?'
    )
  with open(path) as f:
    config = ml_collections.ConfigDict(json.load(f))
  _fill_missing(config, config_lib.base_config())
  return config


def save_normalization(workdir: str, mean, std) -> None:
  atomic.write_text(
    os.path.join(workdir, NORMALIZATION_FILE),
    json.dumps(
      {'mean': [float(m) for m in mean], 'std': [float(s) for s in std]},
      indent=2,
    ),
  )


def normalization(config, workdir: str) -> tuple[list[float], list[float]]:
  """(mean, std) per stored channel, on the [0, 1] scale, that the run used."""
  path = os.path.join(workdir, NORMALIZATION_FILE)
  if os.path.exists(path):
    with open(path) as f:
      record = json.load(f)
    return record['mean'], record['std']
  spec = specs.spec_for(config)
  if spec.mean is not None:
    return list(spec.mean), list(spec.std)
  raise FileNotFoundError(
    f'{path} not found: {workdir} was trained before runs recorded the '
    f'normalisation of {spec.name}: rerun its training command once (a '
    f'finished run only writes this file and re-evaluates)'
  )


def _fill_missing(config, defaults) -> None:
  for key, value in defaults.items():
    if key not in config:
      config[key] = value
    elif (
      isinstance(value, ml_collections.ConfigDict) and key != 'model_overrides'
    ):
      _fill_missing(config[key], value)


# The keys whose change alters what a resumed run computes: the model, the
# data and its order (shuffle_buffer: ImageNet's), the loss, the optimizer
# and its schedule. Checked on resume.
RESULT_KEYS = (
  'model',
  'model_overrides',
  'memory_efficient',
  'half_precision',
  'half_precision_dtype',
  'loss_scaling',
  'init_from',
  'init_from_keras',
  'freeze',
  'freeze_batch_stats',
  'head_lr_multiplier',
  'layer_lr_decay',
  'ema_decay',
  'label_mode',
  'dataset',
  'class_names',
  'skip_unreadable_images',
  'train_split',
  'eval_split',
  'validation_fraction',
  'test_split',
  'test_tta',
  'select_on',
  'image_size',
  'channels',
  'augment',
  'batch_size',
  'num_epochs',
  'optimizer',
  'learning_rate',
  'lr_batch_reference',
  'schedule',
  'lr_boundaries',
  'lr_decay',
  'warmup_epochs',
  'momentum',
  'nesterov',
  'weight_decay',
  'weight_decay_mode',
  'label_smoothing',
  'mixup_alpha',
  'class_weighting',
  'class_sampling',
  'grad_clip_norm',
  'seed',
  'rng_impl',
  'shuffle_buffer',
)
# The keys that may change between invocations of one run: where things are,
# how often to log, evaluate and save, how to start processes. Every key of
# config.base_config() is in exactly one of the two (tested).
BOOKKEEPING_KEYS = (
  'data_dir',
  'manual_dir',
  'eval_batch_size',
  'log_every_steps',
  'eval_every_epochs',
  'checkpoint_every_steps',
  'keep_checkpoints',
  'select_metric',
  'progress_bar',
  'distributed',
  'coordinator_address',
  'num_processes',
  'process_id',
  'distributed_timeout_s',
  'parallelism',
  'workdir_lock',
  'wait_for_lock_s',
  'workdir_lock_stale_s',
  'allow_config_change',
  'stop_after_steps',
  'compilation_cache_dir',
  'restart',
)


class ConfigChangeError(checkpointing.CheckpointMismatchError):
  """A resume whose config would change the result of the run.

  A mismatch, not damage: the checkpoint is left where it is.
  """


def config_changes(
  stored: dict, config: ml_collections.ConfigDict
) -> dict[str, tuple[Any, Any]]:
  """'key' (dotted for nested keys) -> (stored, current), for RESULT_KEYS.

  `stored` is a config as JSON recorded it. A key it does not have was added
  to the project after it was written, so that run used the key's default:
  it is compared as the default.
  """
  return _changes(_as_today(stored), _as_today(json.loads(config.to_json())))


def _changes(stored: dict, current: dict) -> dict[str, tuple[Any, Any]]:
  changes = {}
  for key in RESULT_KEYS:
    _compare(key, stored.get(key), current.get(key), changes)
  return changes


def _as_today(recorded: dict) -> dict:
  """A recorded config in today's terms, so equal runs compare equal.

  Missing keys take their defaults; the deprecated init_from_keras=NAME is
  init_from='keras:NAME'; a run that started from Keras weights before runs
  recorded their source's BN epsilon used Keras's.
  """
  defaults = config_lib.base_config()
  filled = ml_collections.ConfigDict(recorded)
  _fill_missing(filled, defaults)
  config = json.loads(filled.to_json())
  legacy = config.get('init_from_keras')
  if legacy and not config.get('init_from'):
    config['init_from'], config['init_from_keras'] = f'keras:{legacy}', ''
  overrides = config.get('model_overrides') or {}
  if config['init_from'].startswith('keras:') and 'bn_epsilon' not in overrides:
    from densenet_flax import convert

    config['model_overrides'] = dict(
      overrides, bn_epsilon=convert.KERAS_BN_EPSILON
    )
  return config


def _compare(key: str, old, new, changes: dict) -> None:
  if isinstance(old, dict) and isinstance(new, dict):
    for sub in sorted(set(old) | set(new)):
      _compare(f'{key}.{sub}', old.get(sub), new.get(sub), changes)
  elif old != new:
    changes[key] = (old, new)


def compute_dtype(config):
  """The dtype convolutions and BN compute in (params stay float32)."""
  if not config.half_precision:
    return jnp.float32
  return (
    jnp.float16 if config.half_precision_dtype == 'float16' else jnp.bfloat16
  )


def dynamic_loss_scaling(config, backend: str | None = None) -> bool:
  """Whether the run scales its loss dynamically (config.loss_scaling):
  'auto' does for float16 compute on a GPU (default: JAX's backend)."""
  if config.get('loss_scaling', 'auto') != 'auto':
    return config.loss_scaling == 'dynamic'
  backend = backend or jax.default_backend()
  return compute_dtype(config) == jnp.float16 and backend == 'gpu'


def num_classes(config) -> int:
  return specs.spec_for(config).num_classes


def build_model(config, axis_name: str | None = None):
  """The configured DenseNet; BN statistics are averaged over `axis_name`.

  A run started from pretrained weights records their BN epsilon in
  model_overrides (pretrained.resolve_config); older runs with
  init_from_keras did not, and used Keras's.
  """
  overrides = dict(config.model_overrides)
  if config.get('init_from_keras'):
    from densenet_flax import convert

    overrides.setdefault('bn_epsilon', convert.KERAS_BN_EPSILON)
  if config.get('freeze_batch_stats'):
    overrides.setdefault('frozen_bn_through', config.freeze)
  return models.create_model(
    config.model,
    num_classes=num_classes(config),
    dtype=compute_dtype(config),
    memory_efficient=config.memory_efficient,
    bn_axis_name=axis_name,
    **overrides,
  )


def uses_ema(config) -> bool:
  """Whether the run keeps an EMA of its weights (its evaluated model)."""
  return bool(config.get('ema_decay'))


def input_shape(config) -> tuple[int, int, int]:
  """(height, width, channels) of one model input."""
  return (config.image_size, config.image_size, config.channels)


def run_identity(config) -> dict:
  """What a checkpoint must match to be restored into this run."""
  return {
    'model': config.model,
    'num_classes': num_classes(config),
    'dataset': config.dataset,
    'model_overrides': config.model_overrides.to_dict(),
  }


def open_checkpoints(
  config, workdir: str, *, read_only: bool = False
) -> checkpointing.Checkpoints:
  """The checkpoints of a training workdir, kept as the config says.

  Readers (evaluation, inference) open them `read_only`: they never touch a
  save that a training run may have in flight.
  """
  return checkpointing.Checkpoints(
    os.path.join(workdir, 'checkpoints'),
    keep=config.keep_checkpoints,
    select_metric=config.select_metric,
    read_only=read_only,
  )


def restore_variables(
  workdir: str,
  checkpoint: str | int = 'latest',
  *,
  config: ml_collections.ConfigDict | None = None,
  sharding: jax.sharding.Sharding | None = None,
  ema: bool | None = None,
):
  """A checkpoint's variables, with no optimizer built.

  Returns (model, {'params', 'batch_stats'}, step). A run with an EMA of its
  weights (config.ema_decay > 0) gives the EMA, unless `ema=False`. For
  'latest', a damaged newest checkpoint is skipped with a warning (and left
  in place) for the one before it; an error that is not damage raises
  checkpointing.CheckpointReadError. A training run may go on beside: only
  committed checkpoints are read, and one it deletes during the read is
  resolved again (`Checkpoints.restore_committed`). `config` defaults to the
  workdir's config.json; `sharding` places the arrays (default: the first
  device; under many processes, pass a replicated global sharding). Every
  process of a run must call this together.
  """
  config = config or load_config(workdir)
  if ema is None:
    ema = uses_ema(config)
  elif ema and not uses_ema(config):
    raise ValueError(
      f'{workdir} was trained without an EMA of its weights '
      f'(config.ema_decay=0)'
    )
  model = build_model(config)
  abstract = jax.eval_shape(
    lambda: model.init(
      jax.random.key(0),
      jnp.zeros((1, *input_shape(config)), jnp.float32),
      train=False,
    )
  )
  ckpts = open_checkpoints(config, workdir, read_only=True)

  def restore(step):
    return ckpts.restore_variables(
      step, abstract, run_identity(config), sharding=sharding, ema=ema
    )

  try:
    # Beside a training run that deletes the step read: resolved again.
    step, variables = ckpts.restore_committed(checkpoint, restore)
    return model, variables, step
  finally:
    ckpts.close()
