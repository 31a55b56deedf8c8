"""Weights from other implementations -> Flax variables {'params', 'batch_stats'}.

`from_keras` reads a `keras.applications.DenseNet121/169/201` model (any
weights: ImageNet, random, fine-tuned). Keras kernels are HWIO and dense
kernels (in, out), as in Flax, so only names change. Nothing here imports
Keras or TensorFlow: the model object is passed in.

Keras builds its DenseNets with BN epsilon 1.001e-5, so the matching Flax model
must use it too; `model_for_keras` returns that model.

`from_torchvision` reads a torchvision DenseNet-121/161/169/201 state dict (a
dict of tensors or arrays, or a .pth/.pt path; torch is imported only to read
a file). The parameter names map one to one (torchvision's `norm5` is
`norm_final` here); conv kernels go from OIHW to HWIO and the classifier from
(out, in) to (in, out). `adapt_input_channels` turns RGB stem weights into
grayscale ones (FER) and back.
"""

from __future__ import annotations

import os
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
_KERAS_LAYER_PART = {
  '0_bn': 'norm1',
  '1_conv': 'conv1',
  '1_bn': 'norm2',
  '2_conv': 'conv2',
}


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
    return (
      f'denseblock{int(stage) - 1}',
      f'denselayer{layer}',
      _KERAS_LAYER_PART[part],
    )
  if m := _KERAS_TRANSITION.match(name):
    stage, part = m.groups()
    return (f'transition{int(stage) - 1}', 'norm' if part == 'bn' else 'conv')
  return None


def keras_architecture(keras_model) -> tuple[str, int | None]:
  """(preset name, number of classes or None without a top) of a Keras DenseNet.

  Recognised by its layer names and shapes, whatever its weights.

  Args:
    keras_model: a `keras.applications.DenseNet121/169/201` model, built
      with or without top.

  Returns:
    (the `models.PRESETS` name with the model's block sizes, growth rate and
    stem width, the width of its 'predictions' layer or None).

  Raises:
    ValueError: the model has no conv1_conv or conv2_block1_2_conv layer, or
      no preset matches it.
  """
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
      f'(no conv1_conv / conv2_block1_2_conv layer)'
    ) from e
  for name, fields in models.PRESETS.items():
    if (
      fields['stem'] == 'imagenet'
      and tuple(fields['block_sizes']) == block_sizes
      and fields['growth_rate'] == growth_rate
      and fields['num_init_features'] == init_features
    ):
      break
  else:
    raise ValueError(
      f'No preset matches the Keras model {keras_model.name!r}: blocks '
      f'{block_sizes}, growth rate {growth_rate}, {init_features} initial '
      f'features'
    )
  try:
    num_classes = keras_model.get_layer('predictions').kernel.shape[-1]
  except ValueError:
    num_classes = None  # include_top=False
  return name, num_classes


def model_for_keras(keras_model, **overrides: Any) -> models.DenseNet:
  """The Flax DenseNet whose variables `from_keras(keras_model)` returns.

  Args:
    keras_model: a keras.applications DenseNet (`keras_architecture`).
    **overrides: DenseNet fields. `bn_epsilon` defaults to Keras's
      KERAS_BN_EPSILON; `num_classes` to the model's top, or 1000 without
      one.

  Raises:
    ValueError: as `keras_architecture`, or an override that is not a
      DenseNet field.
  """
  name, num_classes = keras_architecture(keras_model)
  overrides.setdefault('bn_epsilon', KERAS_BN_EPSILON)
  num_classes = overrides.pop('num_classes', num_classes) or 1000
  return models.create_model(name, num_classes=num_classes, **overrides)


def from_keras(keras_model) -> dict[str, Any]:
  """Copies a Keras DenseNet's weights into Flax variables.

  Every Keras weight is used exactly once and every Flax variable is filled,
  with matching shapes, or a ValueError names the offending layer.

  Args:
    keras_model: a keras.applications DenseNet121/169/201 model object, any
      weights; the stem takes its input's channel count.

  Returns:
    {'params', 'batch_stats'} (nested dicts of float32 numpy arrays) for
    `model_for_keras(keras_model)`. A model built with `include_top=False`
    gives variables without 'classifier' (for fine-tuning with a new head).

  Raises:
    ValueError: as `keras_architecture`, or naming a layer whose weights do
      not fit.
  """
  name, num_classes = keras_architecture(keras_model)
  model = model_for_keras(keras_model)
  expected = jax.eval_shape(
    model.init,
    jax.random.key(0),
    jnp.zeros((1, 64, 64, keras_model.input_shape[-1]), jnp.float32),
  )
  params: dict[str, Any] = {}
  batch_stats: dict[str, Any] = {}

  for layer in keras_model.layers:
    weights = layer.get_weights()
    path = _keras_layer_path(layer.name)
    if path is None:
      if weights:
        raise ValueError(
          f'Keras layer {layer.name!r} has weights but no '
          f'counterpart in the Flax {name}'
        )
      continue
    names = [w.path.split('/')[-1] for w in layer.weights]
    w = dict(zip(names, weights))
    if 'gamma' in w:  # BatchNormalization
      _put(params, path, {'scale': w['gamma'], 'bias': w['beta']})
      _put(
        batch_stats,
        path,
        {'mean': w['moving_mean'], 'var': w['moving_variance']},
      )
    elif 'bias' in w:  # Dense
      _put(params, path, {'kernel': w['kernel'], 'bias': w['bias']})
    else:  # Conv2D without bias
      _put(params, path, {'kernel': w['kernel']})

  if num_classes is None:
    expected['params'].pop('classifier')
  _check_same_structure(params, expected['params'], 'params', keras_model.name)
  _check_same_structure(
    batch_stats, expected['batch_stats'], 'batch_stats', keras_model.name
  )
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
      f'{extra[:5]}{"..." if len(extra) > 5 else ""}'
    )
  for key, value in got_flat.items():
    if tuple(value.shape) != tuple(want_flat[key].shape):
      raise ValueError(
        f'{source}: {collection} {key} has shape {tuple(value.shape)}, the '
        f'Flax model expects {tuple(want_flat[key].shape)}'
      )


# --- torchvision ---------------------------------------------------------------

TORCHVISION_BN_EPSILON = 1e-5  # nn.BatchNorm2d's default, as torchvision uses
# Names torchvision's own loader rewrites (checkpoints from before 0.3):
# 'denselayer1.norm.1.weight' -> 'denselayer1.norm1.weight'.
_TORCH_OLD_STYLE = re.compile(
  r'^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.'
  r'(?:weight|bias|running_mean|running_var))$'
)
_TORCH_LAYER = re.compile(
  r'^features\.denseblock(\d+)\.denselayer(\d+)\.(norm1|conv1|norm2|conv2)\.'
  r'(\w+)$'
)
_TORCH_TRANSITION = re.compile(
  r'^features\.transition(\d+)\.(norm|conv)\.(\w+)$'
)
_TORCH_TOP = re.compile(r'^features\.(conv0|norm0|norm5)\.(\w+)$')
_TORCH_BN = {
  'weight': ('params', 'scale'),
  'bias': ('params', 'bias'),
  'running_mean': ('batch_stats', 'mean'),
  'running_var': ('batch_stats', 'var'),
}


def torchvision_state_dict(source) -> dict[str, np.ndarray]:
  """A state dict (or a .pth/.pt path) -> name -> float32 array, names as
  torchvision's current ones (no 'module.' prefix, no old-style names).

  Args:
    source: a dict of name -> torch tensor or array, or a path (str or
      os.PathLike) that torch.load reads with weights_only=True (needs torch:
      pip install .[torch]); a file holding {'state_dict': dict, ...} gives
      that dict.

  Returns:
    name -> float32 numpy array, without the num_batches_tracked entries.

  Raises:
    ValueError: `source`, or what the file holds, is not a dict.
  """
  where = 'the state dict'
  if isinstance(source, (str, os.PathLike)):
    import torch  # only to read the file: pip install .[torch]

    where = os.fspath(source)
    source = torch.load(where, map_location='cpu', weights_only=True)
    if isinstance(source, dict) and isinstance(source.get('state_dict'), dict):
      source = source['state_dict']
  if not isinstance(source, dict):
    raise ValueError(
      f'{where}: expected a state dict (name -> tensor); got '
      f'{type(source).__name__}'
    )
  state = {}
  for name, value in source.items():
    if name.endswith('num_batches_tracked'):
      continue
    name = name.removeprefix('module.')
    if m := _TORCH_OLD_STYLE.match(name):
      name = m.group(1) + m.group(2)
    if hasattr(value, 'detach'):
      value = value.detach().cpu().numpy()
    state[name] = np.asarray(value, np.float32)
  return state


def torchvision_architecture(state: dict) -> tuple[str, int | None, int]:
  """(preset, classes or None without a classifier, input channels).

  Args:
    state: a state dict as `torchvision_state_dict` returns it.

  Returns:
    (the `models.PRESETS` name with the weights' block sizes, growth rate and
    stem width, the rows of classifier.weight or None, conv0's input
    channels).

  Raises:
    ValueError: no features.conv0.weight or first dense layer's conv2, or no
      preset matches.
  """
  blocks: dict[int, int] = {}
  for name in state:
    if m := _TORCH_LAYER.match(name):
      block, layer = int(m.group(1)), int(m.group(2))
      blocks[block] = max(blocks.get(block, 0), layer)
  block_sizes = tuple(blocks[b] for b in sorted(blocks))
  try:
    stem = state['features.conv0.weight']
    growth_rate = state['features.denseblock1.denselayer1.conv2.weight'].shape[
      0
    ]
  except KeyError as e:
    raise ValueError(
      f'Not a torchvision DenseNet state dict: no {e.args[0]}'
    ) from None
  for name, fields in models.PRESETS.items():
    if (
      fields['stem'] == 'imagenet'
      and tuple(fields['block_sizes']) == block_sizes
      and fields['growth_rate'] == growth_rate
      and fields['num_init_features'] == stem.shape[0]
    ):
      break
  else:
    raise ValueError(
      f'No preset matches the torchvision weights: blocks {block_sizes}, '
      f'growth rate {growth_rate}, {stem.shape[0]} initial features'
    )
  classifier = state.get('classifier.weight')
  return (
    name,
    (None if classifier is None else classifier.shape[0]),
    stem.shape[1],
  )


def model_for_torchvision(source, **overrides: Any) -> models.DenseNet:
  """The Flax DenseNet whose variables `from_torchvision(source)` returns.

  Args:
    source: as for `torchvision_state_dict`.
    **overrides: DenseNet fields. `bn_epsilon` defaults to
      TORCHVISION_BN_EPSILON; `num_classes` to the classifier's, or 1000
      without one.

  Raises:
    ValueError: as `torchvision_state_dict` and `torchvision_architecture`,
      or an override that is not a DenseNet field.
  """
  name, num_classes, _ = torchvision_architecture(
    torchvision_state_dict(source)
  )
  overrides.setdefault('bn_epsilon', TORCHVISION_BN_EPSILON)
  num_classes = overrides.pop('num_classes', num_classes) or 1000
  return models.create_model(name, num_classes=num_classes, **overrides)


def from_torchvision(source) -> dict[str, Any]:
  """Copies a torchvision DenseNet's weights into Flax variables.

  Every weight is used once and every variable filled with the right shape,
  or a ValueError names the weight.

  Args:
    source: as for `torchvision_state_dict`: a state dict or a .pth/.pt path.

  Returns:
    {'params', 'batch_stats'} (nested dicts of float32 numpy arrays; conv
    kernels HWIO, the classifier's (in, out)) for
    `model_for_torchvision(source)`; without a classifier in the weights, none
    in the variables.

  Raises:
    ValueError: as `torchvision_state_dict` and `torchvision_architecture`,
      or naming a weight that does not fit.
  """
  state = torchvision_state_dict(source)
  name, num_classes, channels = torchvision_architecture(state)
  model = model_for_torchvision(state)
  expected = jax.eval_shape(
    model.init, jax.random.key(0), jnp.zeros((1, 64, 64, channels), jnp.float32)
  )
  variables: dict[str, dict] = {'params': {}, 'batch_stats': {}}
  for key, value in state.items():
    collection, path, value = _torch_target(key, value)
    node = variables[collection]
    for part in path[:-1]:
      node = node.setdefault(part, {})
    node[path[-1]] = value
  if num_classes is None:
    expected['params'].pop('classifier')
  for collection in ('params', 'batch_stats'):
    _check_same_structure(
      variables[collection],
      expected[collection],
      collection,
      f'torchvision {name}',
    )
  return variables


def _torch_target(
  key: str, value: np.ndarray
) -> tuple[str, tuple[str, ...], np.ndarray]:
  """A torchvision weight -> (collection, Flax path, value in Flax layout)."""
  if m := _TORCH_LAYER.match(key):
    block, layer, part, leaf = m.groups()
    module = (f'denseblock{block}', f'denselayer{layer}', part)
  elif m := _TORCH_TRANSITION.match(key):
    block, part, leaf = m.groups()
    module = (f'transition{block}', part)
  elif m := _TORCH_TOP.match(key):
    part, leaf = m.groups()
    module = ('norm_final' if part == 'norm5' else part,)
  elif key in ('classifier.weight', 'classifier.bias'):
    module, leaf = ('classifier',), key.split('.')[1]
  else:
    raise ValueError(
      f'torchvision weight {key!r} has no counterpart in the Flax DenseNet'
    )
  if module[-1].startswith('norm'):
    if leaf not in _TORCH_BN:
      raise ValueError(f'torchvision weight {key!r}: unknown BN field')
    collection, name = _TORCH_BN[leaf]
    return collection, (*module, name), value
  if module == ('classifier',):
    if leaf == 'weight':
      return (
        'params',
        ('classifier', 'kernel'),
        value.T,
      )  # (out, in) -> (in, out)
    return 'params', ('classifier', 'bias'), value
  if leaf != 'weight':
    raise ValueError(f'torchvision weight {key!r}: convolutions have no {leaf}')
  return (
    'params',
    (*module, 'kernel'),
    value.transpose(2, 3, 1, 0),
  )  # OIHW->HWIO


def adapt_input_channels(variables: dict, channels: int) -> dict:
  """Variables whose stem takes `channels` (1 or 3) instead of its own count.

  3 -> 1 sums the RGB kernels, so the 1-channel model gives on a gray image
  the logits the RGB model gives on that image in all three channels. 1 -> 3
  splits the kernel evenly, which keeps the logits of a gray image replicated
  to RGB. Only params/conv0/kernel changes; the input is not normalised here.

  Args:
    variables: a DenseNet's {'params', ...}; only params/conv0/kernel
      [kh, kw, C, F] is read.
    channels: the input channels the stem is to take; only 3 -> 1 and
      1 -> 3 change anything.

  Returns:
    `variables` itself when the stem already takes `channels`; else a copy
    sharing every other leaf, with a new float32 params/conv0/kernel.

  Raises:
    ValueError: a change other than 3 -> 1 or 1 -> 3.
  """
  kernel = np.asarray(variables['params']['conv0']['kernel'])
  have = kernel.shape[2]
  if have == channels:
    return variables
  if (have, channels) == (3, 1):
    kernel = kernel.sum(axis=2, keepdims=True)
  elif (have, channels) == (1, 3):
    kernel = np.repeat(kernel / 3, 3, axis=2)
  else:
    raise ValueError(
      f'Cannot adapt a {have}-channel stem to {channels} '
      f'channels; expected 1 <-> 3'
    )
  params = dict(
    variables['params'],
    conv0=dict(variables['params']['conv0'], kernel=kernel.astype(np.float32)),
  )
  return dict(variables, params=params)
