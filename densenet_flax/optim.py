"""The Optax optimizer and learning-rate schedule a config asks for.

SGD with (Nesterov) momentum or AdamW; the paper's piecewise-constant schedule
or cosine, each with optional linear warmup; weight decay as the paper's L2
(added to the gradient before momentum) or decoupled (added to the update),
applied to conv and dense kernels only; optional global-norm clipping.
"""

from __future__ import annotations

import optax
from flax import traverse_util


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
        peak, {int(b * total) - warmup: config.lr_decay
               for b in config.lr_boundaries})
  elif config.schedule == 'constant':
    main = optax.constant_schedule(peak)
  else:
    raise ValueError(f'config.schedule={config.schedule!r}: unknown')
  if not warmup:
    return main
  return optax.join_schedules(
      [optax.linear_schedule(0.0, peak, warmup), main], [warmup])


def decay_mask(params):
  """True for conv and dense kernels; BN scales/biases and biases are not decayed."""
  flat = traverse_util.flatten_dict(params)
  return traverse_util.unflatten_dict(
      {path: path[-1] == 'kernel' for path in flat})


def create_optimizer(config, steps_per_epoch: int
                     ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  schedule = create_schedule(config, steps_per_epoch)
  parts = []
  if config.grad_clip_norm:
    parts.append(optax.clip_by_global_norm(config.grad_clip_norm))
  decay = (optax.add_decayed_weights(config.weight_decay, mask=decay_mask)
           if config.weight_decay else None)
  if decay and config.weight_decay_mode == 'l2':
    parts.append(decay)
  if config.optimizer == 'sgd':
    if config.momentum:
      parts.append(optax.trace(decay=config.momentum,
                               nesterov=config.nesterov))
  elif config.optimizer == 'adamw':
    parts.append(optax.scale_by_adam())
  else:
    raise ValueError(f'config.optimizer={config.optimizer!r}: unknown')
  if decay and config.weight_decay_mode == 'decoupled':
    parts.append(decay)
  parts.append(optax.scale_by_learning_rate(schedule))
  return optax.chain(*parts), schedule
