"""Weights from other implementations -> Flax variables {'params', 'batch_stats'}.

`from_keras` reads a `keras.applications.DenseNet121/169/201` model (any
weights: ImageNet, random, fine-tuned). Keras kernels are HWIO and dense
kernels (in, out), as in Flax, so only names change. Nothing here imports
Keras or TensorFlow: the model object is passed in.

Keras builds its DenseNets with BN epsilon 1.001e-5, so the matching Flax model
must use it too; `model_for_keras` returns that model.
"""

from __future__ import annotations

import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from densenet_flax import models

KERAS_BN_EPSILON = 1.001e-5

_KERAS_BLOCK = re.compile(r'conv(\d)_block(\d+)_(0_bn|1_conv|1_bn|2_conv)$')
_KERAS_TRANSITION = re.compile(r'pool(\d)_(bn|conv)$')
_KERAS_LAYER_PART = {'0_bn': 'norm1', '1_conv': 'conv1', '1_bn': 'norm2',
                     '2_conv': 'conv2'}


def _keras_layer_path(name: str) -> tuple[str, ...] | None:
  """Keras layer name -> path of the Flax module, or None for weightless layers."""
  if name == 'conv1_conv':
    return ('conv0',)
  if name == 'conv1_bn':
    return ('norm0',)
  if name == 'bn':
    return ('norm_final',)
  if name == 'predictions':
    return ('classifier',)
  if m := _KERAS_BLOCK.match(name):
    stage, layer, part = m.groups()
    return (f'denseblock{int(stage) - 1}', f'denselayer{layer}',
            _KERAS_LAYER_PART[part])
  if m := _KERAS_TRANSITION.match(name):
    stage, part = m.groups()
    return (f'transition{int(stage) - 1}', 'norm' if part == 'bn' else 'conv')
  return None


def keras_architecture(keras_model) -> tuple[str, int | None]:
  """(preset name, number of classes or None without a top) of a Keras DenseNet."""
  blocks: dict[int, int] = {}
  for layer in keras_model.layers:
    if m := _KERAS_BLOCK.match(layer.name):
      stage, index = int(m.group(1)), int(m.group(2))
      blocks[stage] = max(blocks.get(stage, 0), index)
  block_sizes = tuple(blocks[s] for s in sorted(blocks))
  try:
    growth_rate = keras_model.get_layer('conv2_block1_2_conv').kernel.shape[-1]
    init_features = keras_model.get_layer('conv1_conv').kernel.shape[-1]
  except ValueError as e:
    raise ValueError(
        f'{keras_model.name!r} is not a keras.applications DenseNet '
        f'(no conv1_conv / conv2_block1_2_conv layer)') from e
  for name, fields in models.PRESETS.items():
    if (fields['stem'] == 'imagenet'
        and tuple(fields['block_sizes']) == block_sizes
        and fields['growth_rate'] == growth_rate
        and fields['num_init_features'] == init_features):
      break
  else:
    raise ValueError(
        f'No preset matches the Keras model {keras_model.name!r}: blocks '
        f'{block_sizes}, growth rate {growth_rate}, {init_features} initial '
        f'features')
  try:
    num_classes = keras_model.get_layer('predictions').kernel.shape[-1]
  except ValueError:
    num_classes = None  # include_top=False
  return name, num_classes


def model_for_keras(keras_model, **overrides: Any) -> models.DenseNet:
  """The Flax DenseNet whose variables `from_keras(keras_model)` returns."""
  name, num_classes = keras_architecture(keras_model)
  overrides.setdefault('bn_epsilon', KERAS_BN_EPSILON)
  num_classes = overrides.pop('num_classes', num_classes) or 1000
  return models.create_model(name, num_classes=num_classes, **overrides)


def from_keras(keras_model) -> dict[str, Any]:
  """Copies a Keras DenseNet's weights into Flax variables.

  Returns {'params', 'batch_stats'} for `model_for_keras(keras_model)`. A model
  built with `include_top=False` gives variables without 'classifier' (for
  fine-tuning with a new head). Every Keras weight is used exactly once and
  every Flax variable is filled, with matching shapes, or a ValueError names
  the offending layer.
  """
  name, num_classes = keras_architecture(keras_model)
  model = model_for_keras(keras_model)
  expected = jax.eval_shape(
      model.init, jax.random.key(0),
      jnp.zeros((1, 64, 64, keras_model.input_shape[-1]), jnp.float32))
  params: dict[str, Any] = {}
  batch_stats: dict[str, Any] = {}

  for layer in keras_model.layers:
    weights = layer.get_weights()
    path = _keras_layer_path(layer.name)
    if path is None:
      if weights:
        raise ValueError(f'Keras layer {layer.name!r} has weights but no '
                         f'counterpart in the Flax {name}')
      continue
    names = [w.path.split('/')[-1] for w in layer.weights]
    w = dict(zip(names, weights))
    if 'gamma' in w:  # BatchNormalization
      _put(params, path, {'scale': w['gamma'], 'bias': w['beta']})
      _put(batch_stats, path,
           {'mean': w['moving_mean'], 'var': w['moving_variance']})
    elif 'bias' in w:  # Dense
      _put(params, path, {'kernel': w['kernel'], 'bias': w['bias']})
    else:  # Conv2D without bias
      _put(params, path, {'kernel': w['kernel']})

  if num_classes is None:
    expected['params'].pop('classifier')
  _check_same_structure(params, expected['params'], 'params', keras_model.name)
  _check_same_structure(batch_stats, expected['batch_stats'], 'batch_stats',
                        keras_model.name)
  return {'params': params, 'batch_stats': batch_stats}


def _put(tree: dict, path: tuple[str, ...], leaves: dict[str, np.ndarray]):
  node = tree
  for key in path:
    node = node.setdefault(key, {})
  if node:
    raise ValueError(f'Two Keras layers map to {"/".join(path)}')
  node.update({k: np.asarray(v, np.float32) for k, v in leaves.items()})


def _check_same_structure(got: dict, want: dict, collection: str, source: str):
  got_flat = traverse_util.flatten_dict(got, sep='/')
  want_flat = traverse_util.flatten_dict(want, sep='/')
  missing = sorted(set(want_flat) - set(got_flat))
  extra = sorted(set(got_flat) - set(want_flat))
  if missing or extra:
    raise ValueError(
        f'{source}: {collection} do not match the Flax model; missing '
        f'{missing[:5]}{"..." if len(missing) > 5 else ""}, unexpected '
        f'{extra[:5]}{"..." if len(extra) > 5 else ""}')
  for key, value in got_flat.items():
    if tuple(value.shape) != tuple(want_flat[key].shape):
      raise ValueError(
          f'{source}: {collection} {key} has shape {tuple(value.shape)}, the '
          f'Flax model expects {tuple(want_flat[key].shape)}')

