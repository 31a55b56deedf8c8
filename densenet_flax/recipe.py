"""What a run's config means: its model, input shape, dtypes and class count.

Training, evaluation, inference, export and the benchmarks build a run's
model and shapes through these functions, so they cannot drift apart. Pure
functions of the config (the dataset's spec included); nothing here reads
a workdir or imports TensorFlow.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from densenet_flax import models
from densenet_flax import weight_source
from densenet_flax.data import specs


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


def input_shape(config) -> tuple[int, int, int]:
  """(height, width, channels) of one model input."""
  return (config.image_size, config.image_size, config.channels)


def uses_ema(config) -> bool:
  """Whether the run keeps an EMA of its weights (its evaluated model)."""
  return bool(config.get('ema_decay'))


def build_model(config, axis_name: str | None = None):
  """The configured DenseNet; BN statistics are averaged over `axis_name`.

  Its fields: config.model_overrides, with the BN epsilon of the run's
  pretrained weights (weight_source.model_overrides), and frozen BN statistics
  through config.freeze when config.freeze_batch_stats.
  """
  dtype = compute_dtype(config)
  overrides = weight_source.model_overrides(config)
  if config.get('freeze_batch_stats'):
    overrides.setdefault('frozen_bn_through', config.freeze)
  return models.create_model(
    config.model,
    num_classes=specs.spec_for(config).num_classes,
    dtype=dtype,
    memory_efficient=config.memory_efficient,
    bn_axis_name=axis_name,
    **overrides,
  )


def restore_target(config):
  """What restoring a checkpoint of the run needs, without reading one:
  (the model, the shapes of its variables, the identity the checkpoint
  must match)."""
  shape = input_shape(config)
  model = build_model(config)
  identity = {
    'model': config.model,
    'num_classes': model.num_classes,
    'dataset': config.dataset,
    'model_overrides': config.model_overrides.to_dict(),
  }
  abstract = jax.eval_shape(
    lambda: model.init(
      jax.random.key(0), jnp.zeros((1, *shape), jnp.float32), train=False
    )
  )
  return model, abstract, identity


def identity(config) -> dict:
  """What a checkpoint must match to be restored into this run."""
  return {
    'model': config.model,
    'num_classes': num_classes(config),
    'dataset': config.dataset,
    'model_overrides': config.model_overrides.to_dict(),
  }
