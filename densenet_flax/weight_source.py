"""What `config.init_from` names: a source of first weights, parsed.

  keras:DenseNet121            keras.applications ImageNet weights, downloaded
                               by Keras (DenseNet121, DenseNet169, DenseNet201)
  keras:/path/weights.h5       a local keras.applications weights file
  torchvision:/path/x.pth      a torchvision DenseNet-121/161/169/201 state dict
  workdir:/path/run[:WHICH]    another run's checkpoint; WHICH is best (the
                               default), latest or a step

Parsing reads nothing: config checks, the model's recipe and the resume
policy use it; densenet_flax/pretrained.py reads the weights.
"""

from __future__ import annotations

import dataclasses
import os
import re

from densenet_flax import convert

KINDS = ('keras', 'torchvision', 'workdir')
KERAS_NAMES = ('DenseNet121', 'DenseNet169', 'DenseNet201')
_WHICH = re.compile(r'^(.*):(best|latest|\d+)$')
_KEY = 'config.init_from'


@dataclasses.dataclass(frozen=True)
class Source:
  """A parsed `config.init_from`.

  `str(source)` writes it back as 'kind:location[:checkpoint]'.

  Attributes:
    kind: one of KINDS.
    location: a KERAS_NAMES name (Keras), or a path with '~' expanded.
    checkpoint: workdir sources only: 'best', 'latest' or a step (int).
  """

  kind: str  # one of KINDS
  location: str  # a Keras model name or a path
  checkpoint: str | int = 'best'  # workdir sources only

  def __str__(self) -> str:
    suffix = f':{self.checkpoint}' if self.kind == 'workdir' else ''
    return f'{self.kind}:{self.location}{suffix}'


def parse(init_from: str) -> Source:
  """'kind:location' -> Source; a ValueError names the key and the forms.

  Args:
    init_from: 'keras:NAME' (one of KERAS_NAMES) or 'keras:PATH' (.h5),
      'torchvision:PATH', or 'workdir:PATH[:best|latest|STEP]'. A location
      is a path when it has a path separator, starts with '~' or '.', or
      ends in .h5, .pth or .pt.

  Returns:
    The Source; a workdir source's checkpoint is 'best' unless given.

  Raises:
    ValueError: no known 'kind:' prefix, no location, or a Keras location
      that is neither one of KERAS_NAMES nor a path.
  """
  kind, sep, location = init_from.partition(':')
  forms = (
    "'keras:DenseNet121' (or a path to a .h5 weights file), "
    "'torchvision:/path/weights.pth' or 'workdir:/path/run[:best|"
    "latest|STEP]'"
  )
  if not sep or kind not in KINDS or not location:
    raise ValueError(f'{_KEY}={init_from!r}: expected {forms}')
  if kind == 'keras' and not _is_path(location) and location not in KERAS_NAMES:
    raise ValueError(
      f'{_KEY}={init_from!r}: {location!r} is neither a '
      f'keras.applications DenseNet ({", ".join(KERAS_NAMES)}) '
      f'nor a path to a weights file (.h5)'
    )
  if kind == 'workdir':
    checkpoint: str | int = 'best'
    if m := _WHICH.match(location):
      location, checkpoint = m.group(1), m.group(2)
      checkpoint = int(checkpoint) if checkpoint.isdigit() else checkpoint
    return Source(kind, os.path.expanduser(location), checkpoint)
  return Source(
    kind, os.path.expanduser(location) if _is_path(location) else location
  )


def _is_path(location: str) -> bool:
  return (
    os.sep in location
    or location.endswith(('.h5', '.pth', '.pt'))
    or location.startswith(('~', '.'))
  )


def source_of(config) -> Source | None:
  """The run's source: `init_from`, or the deprecated `init_from_keras`.

  Args:
    config: a run config; `init_from` (see `parse`) wins over
      `init_from_keras` (a KERAS_NAMES name or a .h5 path).

  Returns:
    The parsed Source, or None when neither is set.

  Raises:
    ValueError: as `parse`.
  """
  if config.get('init_from'):
    return parse(config.get('init_from'))
  if config.get('init_from_keras'):
    return parse(f'keras:{config.get("init_from_keras")}')
  return None


def model_overrides(config) -> dict:
  """The DenseNet fields a run's config sets: its model_overrides, with the
  BN epsilon of its weights' source where the config does not name one.

  `resolve_config` writes that epsilon into a run's config; runs started
  from Keras weights before configs recorded it (init_from_keras) were
  built with Keras's. The one place that reads a config's epsilon so.

  Args:
    config: a run config, as a ConfigDict or as the dict of its JSON.
  """
  overrides = dict(config.get('model_overrides') or {})
  source = source_of(config)
  if source is not None and source.kind == 'keras':
    overrides.setdefault('bn_epsilon', convert.KERAS_BN_EPSILON)
  return overrides
