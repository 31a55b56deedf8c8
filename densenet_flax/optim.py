"""The Optax optimizer and learning-rate schedule a config asks for.

SGD with (Nesterov) momentum or AdamW; the paper's piecewise-constant schedule,
cosine, or a per-epoch exponential decay, each with optional linear warmup; weight decay as the paper's L2
(added to the gradient before momentum) or decoupled (added to the update),
applied to conv and dense kernels only; optional global-norm clipping.

Fine-tuning splits the params by stage (models.stage_names) with
`optax.multi_transform`: frozen stages get no update and no optimizer state,
and each other stage its own learning-rate multiplier (head_lr_multiplier,
layer_lr_decay).
"""

from __future__ import annotations

import jax
import optax
from flax import traverse_util

from densenet_flax import models


def learning_rate(config) -> float:
  """The peak rate, scaled with the global batch when the recipe says so."""
  rate = config.learning_rate
  if config.lr_batch_reference:
    rate *= config.batch_size / config.lr_batch_reference
  return rate


def create_schedule(config, steps_per_epoch: int) -> optax.Schedule:
  peak = learning_rate(config)
  total = max(1, int(config.num_epochs * steps_per_epoch))
  warmup = int(config.warmup_epochs * steps_per_epoch)
  if config.schedule == 'cosine':
    return optax.warmup_cosine_decay_schedule(0.0, peak, warmup, total)
  if config.schedule == 'piecewise':
    main = optax.piecewise_constant_schedule(
      peak,
      {int(b * total) - warmup: config.lr_decay for b in config.lr_boundaries},
    )
  elif config.schedule == 'exponential':
    # Times lr_decay after every epoch (PyTorch's ExponentialLR, stepped
    # per epoch).
    main = optax.exponential_decay(
      peak,
      transition_steps=max(1, steps_per_epoch),
      decay_rate=config.lr_decay,
      staircase=True,
    )
  elif config.schedule == 'constant':
    main = optax.constant_schedule(peak)
  else:
    raise ValueError(f'config.schedule={config.schedule!r}: unknown')
  if not warmup:
    return main
  return optax.join_schedules(
    [optax.linear_schedule(0.0, peak, warmup), main], [warmup]
  )


def decay_mask(params):
  """True for conv and dense kernels; BN scales/biases and biases are not decayed."""
  flat = traverse_util.flatten_dict(params)
  return traverse_util.unflatten_dict(
    {path: path[-1] == 'kernel' for path in flat}
  )


def stage_lr_multipliers(config) -> dict[str, float]:
  """Stage -> learning-rate multiplier; 0.0 for frozen stages.

  The classifier gets head_lr_multiplier; a stage s steps below it gets
  layer_lr_decay**s; `freeze` and the stages before it get 0.
  """
  blocks = num_blocks(config)
  stages = models.stage_names(blocks)
  frozen = models.stages_through(blocks, config.get('freeze', ''))
  decay = config.get('layer_lr_decay', 1.0)
  multipliers = {}
  for depth, stage in enumerate(reversed(stages)):
    rate = decay**depth
    if stage == 'classifier':
      rate *= config.get('head_lr_multiplier', 1.0)
    multipliers[stage] = 0.0 if stage in frozen else rate
  return multipliers


def is_fine_tuning(config) -> bool:
  """Whether the params are split by stage (else one plain chain)."""
  return bool(
    config.get('freeze')
    or config.get('head_lr_multiplier', 1.0) != 1.0
    or config.get('layer_lr_decay', 1.0) != 1.0
  )


def frozen_stages(config) -> tuple[str, ...]:
  return tuple(
    stage for stage, rate in stage_lr_multipliers(config).items() if rate == 0
  )


def num_blocks(config) -> int:
  """Dense blocks of the configured model (its stages depend on them)."""
  return len(
    config.model_overrides.get(
      'block_sizes', models.PRESETS[config.model]['block_sizes']
    )
  )


def create_optimizer(
  config, steps_per_epoch: int
) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """(optimizer, base schedule)."""
  schedule = create_schedule(config, steps_per_epoch)
  if not is_fine_tuning(config):
    return _chain(config, schedule), schedule
  multipliers = stage_lr_multipliers(config)
  label = lambda rate: 'frozen' if rate == 0 else f'lr_x{rate:.6g}'  # noqa: E731
  transforms = {}
  for rate in set(multipliers.values()):
    transforms[label(rate)] = (
      optax.set_to_zero()
      if rate == 0
      else _chain(
        config, lambda step, rate=rate: rate * schedule(step), clip=False
      )
    )

  def labels(params):
    return {
      name: jax.tree_util.tree_map(
        lambda _, name=name: label(multipliers[models.stage_of(name)]), tree
      )
      for name, tree in params.items()
    }

  tx = optax.multi_transform(transforms, labels)
  if config.grad_clip_norm:  # over all params; frozen ones have no gradient
    tx = optax.chain(optax.clip_by_global_norm(config.grad_clip_norm), tx)
  return tx, schedule


def _chain(config, schedule, clip: bool = True) -> optax.GradientTransformation:
  parts = []
  if clip and config.grad_clip_norm:
    parts.append(optax.clip_by_global_norm(config.grad_clip_norm))
  decay = (
    optax.add_decayed_weights(config.weight_decay, mask=decay_mask)
    if config.weight_decay
    else None
  )
  if decay and config.weight_decay_mode == 'l2':
    parts.append(decay)
  if config.optimizer == 'sgd':
    if config.momentum:
      parts.append(optax.trace(decay=config.momentum, nesterov=config.nesterov))
  elif config.optimizer == 'adamw':
    parts.append(optax.scale_by_adam())
  else:
    raise ValueError(f'config.optimizer={config.optimizer!r}: unknown')
  if decay and config.weight_decay_mode == 'decoupled':
    parts.append(decay)
  parts.append(optax.scale_by_learning_rate(schedule))
  return optax.chain(*parts)
