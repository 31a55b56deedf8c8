"""A training run's directory: its files, and its checkpoints read back.

  <workdir>/config.json         the run's full config (written by process 0)
  <workdir>/normalization.json  the per-channel mean/std its inputs were
                                normalised with (computed from the training
                                split for datasets without standard values)
  <workdir>/checkpoints/        Orbax checkpoints (checkpointing.Checkpoints)

`restore_variables` gives a checkpoint's params and BN statistics without
building an optimizer: what evaluation, inference and export load. Nothing
here imports TensorFlow.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import ml_collections

from densenet_flax import atomic
from densenet_flax import checkpointing
from densenet_flax import config_keys
from densenet_flax import recipe
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
    return config_keys.with_defaults(json.load(f))


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


@dataclasses.dataclass(frozen=True)
class Restored:
  """A checkpoint's variables and what they belong to.

  config: the run's config; model: its DenseNet; variables: {'params',
  'batch_stats'} (the EMA's where `ema`); step: the checkpoint's step.
  """

  config: ml_collections.ConfigDict
  model: Any
  variables: dict
  step: int
  ema: bool


def restore_run(
  workdir: str,
  checkpoint: str | int = 'latest',
  *,
  config: ml_collections.ConfigDict | None = None,
  sharding: jax.sharding.Sharding | None = None,
  ema: bool | None = None,
) -> Restored:
  """A checkpoint's variables, with no optimizer built.

  A run with an EMA of its weights (config.ema_decay > 0) gives the EMA,
  unless `ema=False`. For 'latest', a damaged newest checkpoint is skipped
  with a warning (and left in place) for the one before it; an error that is
  not damage raises checkpointing.CheckpointReadError. A training run may go
  on beside: only committed checkpoints are read, and one it deletes during
  the read is resolved again (`Checkpoints.restore_committed`). `config`
  defaults to the workdir's config.json; `sharding` places the arrays
  (default: the first device; under many processes, pass a replicated
  global sharding). Every process of a run must call this together.
  """
  config = config or load_config(workdir)
  ema = _restored_weights_are_ema(config, workdir, ema)
  ckpts = open_checkpoints(config, workdir, read_only=True)
  model, abstract, identity = recipe.restore_target(config)

  def restore(step):
    return ckpts.restore_variables(
      step, abstract, identity, sharding=sharding, ema=ema
    )

  try:
    # Beside a training run that deletes the step read: resolved again.
    step, variables = ckpts.restore_committed(checkpoint, restore)
  finally:
    ckpts.close()
  return Restored(config, model, variables, step, ema)


def restore_variables(
  workdir: str,
  checkpoint: str | int = 'latest',
  *,
  config: ml_collections.ConfigDict | None = None,
  sharding: jax.sharding.Sharding | None = None,
  ema: bool | None = None,
):
  """(model, {'params', 'batch_stats'}, step) of a checkpoint: restore_run's
  model, variables and step."""
  restored = restore_run(
    workdir, checkpoint, config=config, sharding=sharding, ema=ema
  )
  return restored.model, restored.variables, restored.step


def _restored_weights_are_ema(config, workdir: str, ema: bool | None) -> bool:
  uses_ema = recipe.uses_ema(config)
  if ema and not uses_ema:
    raise ValueError(
      f'{workdir} was trained without an EMA of its weights '
      f'(config.ema_decay=0)'
    )
  return uses_ema if ema is None else ema
