"""Where a run's first weights come from: `config.init_from`.

  keras:DenseNet121            keras.applications ImageNet weights, downloaded
                               by Keras (DenseNet121, DenseNet169, DenseNet201)
  keras:/path/weights.h5       a local keras.applications weights file (the
                               release files, with or without top; no network)
  torchvision:/path/x.pth      a torchvision DenseNet-121/161/169/201 state dict
  workdir:/path/run[:WHICH]    another run's checkpoint; WHICH is best (the
                               default), latest or a step

Whatever the source, the weights are fitted to this run's model the same way,
and each change is logged:
  - the source's architecture must be `config.model` (else an error names both);
  - a stem of 3 channels feeds a 1-channel run by summing its RGB kernels, and
    1 -> 3 splits them (`convert.adapt_input_channels`);
  - the classifier is re-initialised when the class counts differ;
  - the BN epsilon follows the source (Keras builds with 1.001e-5):
    `resolve_config` writes it into `model_overrides.bn_epsilon`, so config.json
    and so evaluation, inference and export build the model training used.
The source is read only for a fresh start: a resumed run restores its own
checkpoint. Keras and torch are imported only for their sources.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import jax
import ml_collections
import numpy as np

from densenet_flax import convert
from densenet_flax import models
from densenet_flax.weight_source import KERAS_NAMES  # noqa: F401
from densenet_flax.weight_source import KINDS  # noqa: F401
from densenet_flax.weight_source import Source
from densenet_flax.weight_source import model_overrides  # noqa: F401
from densenet_flax.weight_source import parse  # noqa: F401
from densenet_flax.weight_source import source_of

log = logging.getLogger(__name__)

_KERAS_PRESET = {name: name.lower() for name in KERAS_NAMES}  # models.PRESETS
_KEY = 'config.init_from'


def resolve_config(
  config: ml_collections.ConfigDict, workdir: str | None = None
) -> ml_collections.ConfigDict:
  """A copy of `config` that names its source's BN epsilon.

  `model_overrides.bn_epsilon` is set to the source's epsilon unless the
  config sets one (then the config's wins, with a warning when they differ).
  Reads no weights: a workdir source's epsilon comes from its config.json,
  or, when `workdir` (this run's) already recorded it for the same source,
  from there, so a resumed run needs no access to its source.

  Args:
    config: the run's config; `model_overrides.bn_epsilon` is the only key
      that can change.
    workdir: this run's workdir, or None.

  Returns:
    `config` itself when it names no source; else a copy.

  Raises:
    ValueError: as `source_of`.
    FileNotFoundError: a workdir source without a config.json.
  """
  source = source_of(config)
  if source is None:
    return config
  if config.get('init_from_keras'):
    log.warning(
      'config.init_from_keras is deprecated: use '
      "--config.init_from='keras:%s' (same weights, also takes a "
      'local .h5 file)',
      config.init_from_keras,
    )
  epsilon = _recorded_epsilon(workdir, source)
  if epsilon is None:
    epsilon = source_bn_epsilon(source)
  config = ml_collections.ConfigDict(config.to_dict())
  overrides = config.model_overrides
  if 'bn_epsilon' not in overrides:
    overrides.bn_epsilon = epsilon
  elif overrides.bn_epsilon != epsilon:
    log.warning(
      'config.model_overrides.bn_epsilon=%g, while %s was trained '
      'with %g: using %g',
      overrides.bn_epsilon,
      source,
      epsilon,
      overrides.bn_epsilon,
    )
  return config


def _recorded_epsilon(workdir: str | None, source: Source) -> float | None:
  """The BN epsilon `workdir`'s config.json recorded for `source`, if any."""
  from densenet_flax import run_directory

  if not workdir or not os.path.exists(
    os.path.join(workdir, run_directory.CONFIG_FILE)
  ):
    return None
  recorded = run_directory.load_config(workdir)
  if source_of(recorded) != source:
    return None
  return recorded.model_overrides.get('bn_epsilon')


def source_bn_epsilon(source: Source) -> float:
  """The BN epsilon the source's model was built with; reads no weights.

  Keras: KERAS_BN_EPSILON; torchvision: TORCHVISION_BN_EPSILON; a workdir:
  its model's, from its config.json.

  Raises:
    FileNotFoundError: a workdir source without a config.json.
  """
  if source.kind == 'keras':
    return convert.KERAS_BN_EPSILON
  if source.kind == 'torchvision':
    return convert.TORCHVISION_BN_EPSILON
  from densenet_flax import recipe
  from densenet_flax import run_directory

  source_config = run_directory.load_config(source.location)
  return recipe.build_model(source_config).bn_epsilon


@dataclasses.dataclass
class Weights:
  """A source's variables and what they were made for.

  Attributes:
    variables: {'params', 'batch_stats'} of host (numpy) arrays, as the
      source has them (its stem's channels and its classifier, if any).
    architecture: the models.PRESETS name of the source's model, when known.
    num_classes: the width of the source's classifier; None when it has none
      (Keras ImageNet weights by name, weights saved without a top).
    description: the source, for logs and errors.
  """

  variables: dict  # {'params', 'batch_stats'}, host arrays
  architecture: str | None  # a models.PRESETS name, when known
  num_classes: int | None  # None: the source has no classifier
  description: str  # for logs and errors


def load(
  source: Source, *, sharding: jax.sharding.Sharding | None = None
) -> Weights:
  """The source's weights as they are (no adaptation).

  `sharding` places a workdir checkpoint as it is read (every process of a
  run must then call this together); the result is copied to the host.

  Args:
    source: what to read. A Keras name downloads (through Keras) its
      ImageNet weights without the top.
    sharding: workdir sources only; None places the checkpoint on the first
      device.

  Returns:
    The Weights, with the source's architecture and class count.

  Raises:
    FileNotFoundError: a torchvision or Keras file that does not exist, a
      workdir without config.json, or no checkpoint there for
      `source.checkpoint`.
    ValueError: a file that does not hold DenseNet weights this package
      reads (convert, `keras_file_architecture`).
  """
  if source.kind == 'torchvision':
    if not os.path.isfile(source.location):
      raise FileNotFoundError(
        f'{_KEY}={str(source)!r}: no file {source.location}'
      )
    state = convert.torchvision_state_dict(source.location)
    name, classes, _ = convert.torchvision_architecture(state)
    return Weights(
      convert.from_torchvision(state),
      name,
      classes,
      f'torchvision {name} ({source.location})',
    )
  if source.kind == 'keras':
    return _load_keras(source)
  from densenet_flax import recipe
  from densenet_flax import run_directory

  source_config = run_directory.load_config(source.location)
  _, variables, step = run_directory.restore_variables(
    source.location, source.checkpoint, config=source_config, sharding=sharding
  )
  from densenet_flax import parallel

  variables = jax.tree_util.tree_map(parallel.local_value, variables)
  return Weights(
    variables,
    source_config.model,
    recipe.num_classes(source_config),
    f'{source_config.model} of {source.location} (step {step})',
  )


def _load_keras(source: Source) -> Weights:
  import keras  # only for Keras sources

  if source.location in KERAS_NAMES:
    name, classes, weights = source.location, None, 'imagenet'
    what = f'Keras {name} ImageNet weights'
  else:
    if not os.path.isfile(source.location):
      raise FileNotFoundError(
        f'{_KEY}={str(source)!r}: no file {source.location}'
      )
    name, classes = keras_file_architecture(source.location)
    weights = source.location
    what = f'Keras {name} ({source.location})'
  kwargs = (
    dict(include_top=True, classes=classes)
    if classes
    else dict(include_top=False, input_shape=(224, 224, 3))
  )
  keras_model = getattr(keras.applications, name)(weights=weights, **kwargs)
  return Weights(
    convert.from_keras(keras_model), _KERAS_PRESET[name], classes, what
  )


# keras.applications DenseNets by dense layers per block (conv2..conv5), and
# by their number of convolutions (a file written by Keras 3 names layers by
# class, e.g. layers/conv2d_17, not by block).
_KERAS_BY_BLOCKS = {
  tuple(models.PRESETS[preset]['block_sizes']): name
  for name, preset in _KERAS_PRESET.items()
}
_KERAS_BY_CONVS = {1 + 2 * sum(b) + 3: n for b, n in _KERAS_BY_BLOCKS.items()}


def keras_file_architecture(path: str) -> tuple[str, int | None]:
  """(keras.applications name, classes or None without top) of a weights file.

  Reads the HDF5 layout only: the release files name layers as Keras does
  (conv2_block1_1_conv, predictions); a Keras 3 `.weights.h5` is recognised
  by its number of convolutions.

  Args:
    path: an HDF5 file: a keras.applications release weights file (with or
      without top), a whole model saved by Keras 2, or a Keras 3
      `.weights.h5`.

  Returns:
    (one of KERAS_NAMES, the width of its top or None without one).

  Raises:
    ValueError: `path` is not an HDF5 file, or does not hold one of the
      KERAS_NAMES DenseNets.
  """
  import h5py  # ships with Keras

  try:
    with h5py.File(path, 'r') as f:
      if 'model_weights' in f:  # a whole model saved by Keras 2 (model.save)
        f = f['model_weights']
      if 'layer_names' in f.attrs:  # the keras.applications release format
        layer_names = [
          n.decode() if isinstance(n, bytes) else str(n)
          for n in f.attrs['layer_names']
        ]
        blocks: dict[int, int] = {}
        for layer in layer_names:
          if m := re.match(r'conv(\d)_block(\d+)_', layer):
            stage = int(m.group(1))
            blocks[stage] = max(blocks.get(stage, 0), int(m.group(2)))
        key = tuple(blocks[s] for s in sorted(blocks))
        name = _KERAS_BY_BLOCKS.get(key)
        classes = None
        if 'predictions' in layer_names:
          kernel = _find_dataset(f['predictions'], 'kernel')
          classes = int(kernel.shape[-1])
        what = f'dense blocks of {key} layers'
      else:  # Keras 3 .weights.h5
        layer_groups = list(f['layers']) if 'layers' in f else []
        convs = sum(
          1 for g in layer_groups if re.fullmatch(r'conv2d(_\d+)?', g)
        )
        name = _KERAS_BY_CONVS.get(convs)
        dense = [g for g in layer_groups if re.fullmatch(r'dense(_\d+)?', g)]
        classes = (
          int(f['layers'][dense[0]]['vars']['0'].shape[-1]) if dense else None
        )
        what = f'{convs} convolutions'
  except OSError as e:
    raise ValueError(
      f'{_KEY}: {path} is not an HDF5 weights file ({e})'
    ) from None
  if name is None:
    raise ValueError(
      f'{_KEY}: {path} does not hold keras.applications '
      f'DenseNet weights ({what}; expected one of '
      f'{", ".join(KERAS_NAMES)})'
    )
  return name, classes


def _find_dataset(group, leaf: str):
  found = []
  group.visititems(
    lambda n, obj: (
      found.append(obj)
      if n.split('/')[-1].startswith(leaf) and hasattr(obj, 'shape')
      else None
    )
  )
  if not found:
    raise ValueError(f'No {leaf} under {group.name}')
  return found[0]


def fit_to_model(weights: Weights, config) -> dict:
  """The source's variables made to fit this run's model, each change logged.

  Args:
    weights: what `load` returned.
    config: the run's config: its model, channels and dataset (class count).

  Returns:
    Variables to merge into a fresh initialisation
    (`steps.merge_variables`): the stem adapted to config.channels
    (`convert.adapt_input_channels`), and a re-initialised classifier left
    out (when the class counts differ).

  Raises:
    ValueError: the source's architecture is not config.model, or its stem
      cannot be adapted (only 1 <-> 3 channels).
  """
  from densenet_flax import recipe

  if weights.architecture and weights.architecture != config.model:
    raise ValueError(
      f'{_KEY}={config.init_from or config.init_from_keras!r} holds '
      f'{weights.architecture} weights, but config.model={config.model!r}: '
      f'set --config.model={weights.architecture}'
    )
  variables = weights.variables
  have = np.shape(variables['params']['conv0']['kernel'])[2]
  if have != config.channels:
    variables = convert.adapt_input_channels(variables, config.channels)
    log.info(
      '%s: stem adapted from %d to %d input channel(s) (%s)',
      weights.description,
      have,
      config.channels,
      'RGB kernels summed'
      if config.channels == 1
      else 'kernel split evenly over RGB',
    )
  classes = recipe.num_classes(config)
  if weights.num_classes is None:
    log.info(
      '%s: no classifier in the source; a new one (%d classes) is initialised',
      weights.description,
      classes,
    )
  elif weights.num_classes != classes:
    variables = dict(
      variables,
      params={
        k: v for k, v in variables['params'].items() if k != 'classifier'
      },
    )
    log.info(
      '%s: classifier re-initialised (%d classes in the source, %d in %s)',
      weights.description,
      weights.num_classes,
      classes,
      config.dataset,
    )
  else:
    log.info('%s: classifier kept (%d classes)', weights.description, classes)
  return variables


def initial_variables(config, *, sharding=None) -> dict | None:
  """The fitted source variables of `config`, or None without a source.

  Args:
    config: the run's config (`source_of`).
    sharding: as for `load`.

  Returns:
    `fit_to_model`'s variables, or None when the config names no source.

  Raises:
    ValueError, FileNotFoundError: as `source_of`, `load` and `fit_to_model`.
  """
  source = source_of(config)
  if source is None:
    return None
  weights = load(source, sharding=sharding)
  log.info('Initialising from %s', weights.description)
  return fit_to_model(weights, config)
