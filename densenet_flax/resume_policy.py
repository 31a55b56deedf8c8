"""Which config changes a resumed run may make, and which it refuses.

Every key of config_keys.base_config() is either a result key (its change
alters what a resumed run computes: the model, the data and its order, the
loss, the optimizer and its schedule) or a bookkeeping key (where things
are, how often to log, evaluate and save, how to start processes); a test
holds every key to exactly one of the two. A resume that changes a result
key is refused unless config.allow_config_change.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import ml_collections

from densenet_flax import checkpointing
from densenet_flax import config_keys
from densenet_flax import weight_source

log = logging.getLogger(__name__)

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
# config_keys.base_config() is in exactly one of the two (tested).
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


def check_resume(
  meta: dict, config: ml_collections.ConfigDict, workdir: str, step: int
) -> dict[str, tuple[Any, Any]]:
  """What a resume from checkpoint `step` (its record `meta`) changes.

  Raises ConfigChangeError naming every change of a result key, unless
  config.allow_config_change (then it is logged, and the caller records it).
  A checkpoint of an older version records no config: nothing to compare.
  """
  if 'config' not in meta:
    log.info(
      'Checkpoint %d records no config (an older version wrote it); '
      'resuming without comparing configs',
      step,
    )
    return {}
  changes = config_changes(meta['config'], config)
  if changes:
    listing = '; '.join(
      f'{key}: {old!r} -> {new!r}' for key, (old, new) in changes.items()
    )
    if not config.allow_config_change:
      raise ConfigChangeError(
        f'{workdir} was trained to step {step} with another config, and '
        f'these changes alter the result (data order, schedule, model): '
        f'{listing}. Use a new --workdir, put the values back, or pass '
        f'--config.allow_config_change=True to resume with them anyway.'
      )
    log.warning(
      'Resuming at step %d with a changed config (allowed): %s', step, listing
    )
  return changes


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
  init_from='keras:NAME'; the model's fields are those it was built with
  (weight_source.model_overrides: a run that started from Keras weights before
  runs recorded their source's BN epsilon used Keras's); a run from before
  select_on tested its last state when it evaluated on its test split
  (select_on='last').
  """
  config = json.loads(config_keys.with_defaults(recorded).to_json())
  if 'select_on' not in recorded and (
    config['eval_split'] == config['test_split']
  ):
    config['select_on'] = 'last'
  legacy = config.get('init_from_keras')
  if legacy and not config.get('init_from'):
    config['init_from'], config['init_from_keras'] = f'keras:{legacy}', ''
  config['model_overrides'] = weight_source.model_overrides(config)
  return config


def _compare(key: str, old, new, changes: dict) -> None:
  if isinstance(old, dict) and isinstance(new, dict):
    for sub in sorted(set(old) | set(new)):
      _compare(f'{key}.{sub}', old.get(sub), new.get(sub), changes)
  elif old != new:
    changes[key] = (old, new)
