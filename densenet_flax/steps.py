"""The train state and the pure train and eval steps.

`train_step` and `eval_step` take everything they need as arguments; per-run
choices (a TrainSpec, the device axis) are bound once with functools.partial
before parallel.DataParallel compiles them (or one's own jax.jit). With
`axis_name` set, gradients, loss and BN statistics are averaged across
devices, so N devices x B examples compute what 1 device x N*B computes.

Nothing here imports TensorFlow.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training.dynamic_scale import DynamicScale
from flax.training import train_state
from jax import lax

from densenet_flax import models

Array = Any


class TrainState(train_state.TrainState):
  """Params, optimizer state and step (from Flax), plus BN statistics.

  `dynamic_scale` is set when the run scales its loss dynamically
  (config.loss_scaling; by default for float16 on GPU, where it keeps small
  gradients from underflowing). Its scale and count of finite steps are
  part of the state, and so of every checkpoint.
  """

  batch_stats: Any
  dynamic_scale: DynamicScale | None = None


class EMATrainState(TrainState):
  """A TrainState that also keeps an EMA of the weights.

  `ema`: {'params', 'batch_stats'} averaged over steps. A class of its own,
  so that a run without an EMA saves exactly the state it saved before EMAs
  existed, and its older checkpoints restore.
  """

  ema: Any = None

  def ema_model(self) -> 'ModelState':
    """The EMA weights as a model `eval_step` takes."""
    return ModelState(
      apply_fn=self.apply_fn,
      params=self.ema['params'],
      batch_stats=self.ema['batch_stats'],
    )


class ModelState(flax.struct.PyTreeNode):
  """What `eval_step` needs: the model's apply and its variables.

  A TrainState serves too; this one is for restored weights, with no
  optimizer state.
  """

  apply_fn: Any = flax.struct.field(pytree_node=False)
  params: Any
  batch_stats: Any


def create_train_state(
  rng: Array,
  model,
  tx: optax.GradientTransformation,
  image_shape: tuple[int, ...],
  *,
  use_dynamic_scale: bool = False,
  variables: dict | None = None,
  ema: bool = False,
) -> TrainState:
  """A fresh state; `variables` (e.g. imported weights) replace the init values.

  Args:
    rng: the PRNG key of `model.init`.
    model: the Flax module (a models.DenseNet), initialised with train=False
      on one float32 zero image.
    tx: the optimizer; its state is built for the final params.
    image_shape: (height, width, channels) of one input.
    use_dynamic_scale: start a dynamic loss scale (`new_dynamic_scale`).
    variables: {'params', 'batch_stats'}, possibly partial, merged over the
      initial values by `merge_variables`: leaves it lacks (e.g. a new
      classifier) keep their initial values; the others are cast to the
      model's dtypes.
    ema: keep an EMA of the weights (an EMATrainState); the EMA starts at the
      initial weights (after the merge).

  Returns:
    A TrainState (EMATrainState with `ema`) at step 0.

  Raises:
    ValueError: a leaf of `variables` is not in the model, or has another
      shape.
  """
  init = jax.jit(functools.partial(model.init, train=False))
  fresh = init(rng, jnp.zeros((1, *image_shape), jnp.float32))
  if variables is not None:
    fresh = merge_variables(fresh, variables)
  batch_stats = fresh.get('batch_stats', {})
  kwargs = dict(
    apply_fn=model.apply,
    params=fresh['params'],
    tx=tx,
    batch_stats=batch_stats,
    dynamic_scale=new_dynamic_scale() if use_dynamic_scale else None,
  )
  if ema:
    return EMATrainState.create(
      ema={'params': fresh['params'], 'batch_stats': batch_stats}, **kwargs
    )
  return TrainState.create(**kwargs)


def new_dynamic_scale(**kwargs) -> DynamicScale:
  """Flax's DynamicScale (initial scale 2**16, x2 after 2000 finite steps,
  /2 after an overflow), its state as arrays so that it checkpoints and
  replicates like the rest of the state. kwargs: DynamicScale's fields."""
  fields = {'fin_steps': 0, 'scale': 65536.0, **kwargs}
  return DynamicScale(
    **dict(
      fields,
      fin_steps=jnp.asarray(fields['fin_steps'], jnp.int32),
      scale=jnp.asarray(fields['scale'], jnp.float32),
    )
  )


def merge_variables(fresh: dict, loaded: dict) -> dict:
  """`fresh` with every leaf that `loaded` has at the same path and shape.

  Leaves missing from `loaded` (e.g. a new classifier head) keep their
  initial values; a leaf present with another shape is an error naming it.
  """
  flat_fresh = flax.traverse_util.flatten_dict(fresh, sep='/')
  flat_loaded = flax.traverse_util.flatten_dict(loaded, sep='/')
  for key, value in flat_loaded.items():
    if key not in flat_fresh:
      raise ValueError(f'Loaded variable {key} does not exist in the model')
    if tuple(value.shape) != tuple(flat_fresh[key].shape):
      raise ValueError(
        f'Loaded variable {key} has shape {tuple(value.shape)}; '
        f'the model expects {tuple(flat_fresh[key].shape)}'
      )
    flat_fresh[key] = jnp.asarray(value, flat_fresh[key].dtype)
  return flax.traverse_util.unflatten_dict(flat_fresh, sep='/')


def cross_entropy(logits: Array, targets: Array) -> Array:
  """Per-example cross entropy with soft targets: [B, K], [B, K] -> [B]."""
  return -jnp.sum(targets * jax.nn.log_softmax(logits), axis=-1)


MULTI_TARGET_EPSILON = 0.001  # microsoft/FERPlus `_process_target`


def multi_target_weights(
  distribution: Array, epsilon: float = MULTI_TARGET_EPSILON
) -> Array:
  """t = (1 - eps) * [d > 0] + eps: the classes a 'multi_target' row accepts."""
  accepted = (distribution > 0).astype(jnp.float32)
  return (1 - epsilon) * accepted + epsilon


def multi_target_loss(logits: Array, accepted: Array) -> Array:
  """-log(max_k t_k * softmax(logits)_k), per example: [B, K], [B, K] -> [B].

  microsoft/FERPlus `cost_func` for 'multi_target': any accepted class
  predicted with high probability costs little. Computed in log space.
  """
  return -jnp.max(jnp.log(accepted) + jax.nn.log_softmax(logits), axis=-1)


def soft_targets(
  labels: Array, num_classes: int, label_smoothing: float
) -> Array:
  onehot = jax.nn.one_hot(labels, num_classes)
  return (
    optax.smooth_labels(onehot, label_smoothing) if label_smoothing else onehot
  )


def mixup(rng: Array, images: Array, targets: Array, alpha: float):
  """Mixes each example with another of the same batch (Zhang et al. 2018)."""
  lam_rng, perm_rng = jax.random.split(rng)
  lam = jax.random.beta(lam_rng, alpha, alpha)
  perm = jax.random.permutation(perm_rng, images.shape[0])
  images = lam * images + (1 - lam) * images[perm]
  targets = lam * targets + (1 - lam) * targets[perm]
  return images, targets


def _mean(x: Array, axis_name: str | None) -> Array:
  return lax.pmean(x, axis_name) if axis_name else x


@dataclasses.dataclass(frozen=True)
class TrainSpec:
  """What a train step does beyond the model: its targets and loss, frozen
  stages and EMA. Frozen and hashable: bound once, a compile-time constant.

  Attributes:
    num_classes: K, the width of the one-hot targets.
    label_smoothing: optax.smooth_labels' alpha for the targets (0 = off).
    mixup_alpha: alpha of mixup's Beta(alpha, alpha) (`mixup`; 0 = off).
    class_weights: loss weight per class ([K]; train.class_weights), or None
      for equal weights; an example weighs targets @ class_weights.
    frozen: stages (models.stage_names) whose params get no gradient, which
      also spares computing it.
    ema_decay: the state's EMA (if any) moves by 1 - ema_decay towards the
      new weights.
    label_mode: config.label_mode (a valid one). 'multi_target' scores an
      example by its most likely accepted class (`multi_target_loss`); the
      others by cross entropy against the targets.
  """

  num_classes: int
  label_smoothing: float = 0.0
  mixup_alpha: float = 0.0
  class_weights: tuple[float, ...] | None = None
  frozen: tuple[str, ...] = ()
  ema_decay: float = 0.0
  label_mode: str = 'majority'

  def __post_init__(self):
    if self.class_weights is not None:  # an array is not hashable
      weights = tuple(float(w) for w in np.asarray(self.class_weights))
      object.__setattr__(self, 'class_weights', weights)
    object.__setattr__(self, 'frozen', tuple(self.frozen))


def training_targets(batch: dict[str, Array], rng: Array, spec: TrainSpec):
  """(images, targets [B, K], accepted [B, K] or None) of a training batch.

  The targets are one-hot labels, or the batch's `target` (FER+ soft label
  modes), smoothed, then mixed up with the images; 'multi_target' also
  gives the classes each example accepts (`multi_target_weights`), smoothed
  and mixed by the same draw.
  """
  images, labels = batch['image'], batch['label']
  if 'target' in batch:  # FER+ soft label modes
    targets = batch['target'].astype(jnp.float32)
    if spec.label_smoothing:
      targets = optax.smooth_labels(targets, spec.label_smoothing)
  else:
    targets = soft_targets(labels, spec.num_classes, spec.label_smoothing)
  accepted = None
  if spec.label_mode == 'multi_target':
    accepted = multi_target_weights(
      batch['target']
      if 'target' in batch
      else jax.nn.one_hot(labels, spec.num_classes)
    )
    if spec.label_smoothing:
      accepted = optax.smooth_labels(accepted, spec.label_smoothing)
  if not spec.mixup_alpha:
    return images, targets, accepted
  if accepted is None:
    return (*mixup(rng, images, targets, spec.mixup_alpha), None)
  images, both = mixup(  # one draw mixes both
    rng, images, jnp.concatenate([targets, accepted], -1), spec.mixup_alpha
  )
  return images, both[:, : spec.num_classes], both[:, spec.num_classes :]


def train_step(
  state: TrainState,
  batch: dict[str, Array],
  rng: Array,
  *,
  spec: TrainSpec,
  axis_name: str | None = None,
) -> tuple[TrainState, dict[str, Array]]:
  """One SGD step on one device's share of the batch.

  The loss is the weighted mean of the per-example losses over the global
  batch (all devices). `batch`: image [B, H, W, C], label int [B] and, for
  the FER+ soft label modes, target [B, K]. `rng`: the run's key; the step
  folds in the step number (and the device index), so it is the same key
  every step. `axis_name`: the mapped axis over which gradients, loss,
  accuracy and BN statistics are averaged; None on one device, or under a
  plain jax.jit whose shardings let XLA average.

  Returns (new state, metrics): loss and accuracy (device means), and finite
  (1.0 when the new params and BN statistics are all finite). With a
  dynamic loss scale (state.dynamic_scale), a step whose gradients overflow
  changes nothing but the scale (halved) and the step count, and the
  metrics add grads_finite (0.0 for such a step) and loss_scale.
  """
  step_rng = jax.random.fold_in(rng, state.step)
  if axis_name:
    step_rng = jax.random.fold_in(step_rng, lax.axis_index(axis_name))
  dropout_rng, mixup_rng = jax.random.split(step_rng)
  images, targets, accepted = training_targets(batch, mixup_rng, spec)
  if spec.class_weights is None:
    weights = jnp.ones(batch['label'].shape, jnp.float32)
  else:
    weights = targets @ jnp.asarray(spec.class_weights, jnp.float32)
  # Weighted mean over the global batch: sum(w * ce) / sum(w).
  weight_norm = _mean(jnp.mean(weights), axis_name)

  def loss_fn(params):
    logits, updates = state.apply_fn(
      {
        'params': _stop_gradient(params, spec.frozen),
        'batch_stats': state.batch_stats,
      },
      images,
      train=True,
      mutable=['batch_stats'],
      rngs={'dropout': dropout_rng},
    )
    if accepted is None:
      per_example = cross_entropy(logits, targets)
    else:
      per_example = multi_target_loss(logits, accepted)
    loss = jnp.mean(weights * per_example) / weight_norm
    # The loss rides along unscaled: a dynamic scale multiplies the first.
    return loss, (loss, logits, updates['batch_stats'])

  new_state, loss, logits, extra = _update(state, loss_fn, axis_name, spec)
  accuracy = jnp.mean(jnp.argmax(logits, -1) == batch['label'])
  metrics = {
    'loss': _mean(loss, axis_name),
    'accuracy': _mean(accuracy, axis_name),
    **extra,
  }
  metrics['finite'] = all_finite(new_state.params, new_state.batch_stats)
  return new_state, metrics


def _update(state, loss_fn, axis_name, spec: TrainSpec):
  """(new state, loss, logits, extra metrics): the gradient step, the EMA,
  and with a dynamic loss scale the skip of an overflowing step."""
  if state.dynamic_scale is not None:
    grad_fn = state.dynamic_scale.value_and_grad(
      loss_fn, has_aux=True, axis_name=axis_name
    )
    dynamic_scale, grads_finite, (_, (loss, logits, batch_stats)), grads = (
      grad_fn(state.params)
    )
  else:
    (_, (loss, logits, batch_stats)), grads = jax.value_and_grad(
      loss_fn, has_aux=True
    )(state.params)
    grads = _mean(grads, axis_name)
  new_state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
  if isinstance(state, EMATrainState):
    new_state = new_state.replace(
      ema=jax.tree_util.tree_map(
        lambda avg, new: spec.ema_decay * avg + (1 - spec.ema_decay) * new,
        state.ema,
        {'params': new_state.params, 'batch_stats': new_state.batch_stats},
      )
    )
  if state.dynamic_scale is None:
    return new_state, loss, logits, {}
  # The scaled gradients overflowed: skip the step, keeping everything the
  # update would have changed (an EMA and BN statistics too).
  new_state = _unless(grads_finite, new_state, state).replace(
    step=new_state.step, dynamic_scale=dynamic_scale
  )
  extra = {
    'grads_finite': grads_finite.astype(jnp.float32),
    'loss_scale': state.dynamic_scale.scale,  # this step's
  }
  return new_state, loss, logits, extra


def _unless(condition: Array, new: TrainState, old: TrainState) -> TrainState:
  """`new` where `condition`, else `old`, leaf by leaf."""
  return jax.tree_util.tree_map(
    functools.partial(jnp.where, condition), new, old
  )


def _stop_gradient(params: dict, frozen: tuple[str, ...]) -> dict:
  """`params` with no gradient flowing into the frozen stages' leaves."""
  if not frozen:
    return params
  return {
    name: (lax.stop_gradient(tree) if models.stage_of(name) in frozen else tree)
    for name, tree in params.items()
  }


def all_finite(*trees) -> Array:
  """1.0 where every leaf of `trees` is finite, else 0.0 (one fused reduction).

  The loss is computed before the update, and in training mode BN normalises
  with the batch's statistics: an update that overflows shows up in the new
  params and running statistics first, steps before the loss goes NaN.
  The leaves are checked as one concatenation, which XLA fuses into a single
  reduction, rather than leaf by leaf, which compiles to two kernels per leaf
  (docs/benchmarks.md#what-the-steps-design-rests-on).
  """
  leaves = [jnp.ravel(x) for x in jax.tree_util.tree_leaves(trees)]
  if not leaves:
    return jnp.float32(1.0)
  return jnp.all(jnp.isfinite(jnp.concatenate(leaves))).astype(jnp.float32)


def eval_step(
  state: TrainState | ModelState, batch: dict[str, Array]
) -> dict[str, Array]:
  """Per-example predictions for one device's share of an eval batch.

  Args:
    state: the weights to evaluate: a TrainState, or a ModelState (restored
      weights, `EMATrainState.ema_model()`).
    batch: image [B, H, W, C] (or [B, T, H, W, C] for T test-time crops, whose
      probabilities are averaged), label int [B]. Other keys (the mask) are
      ignored.

  Returns:
    {'prediction': int32 [B], the most probable class; 'loss': float32 [B],
    -log of the label's probability (floored at 1e-12)}. The caller applies
    the mask and sums, so padded examples never count.
  """
  images = batch['image']
  crops = images.shape[1] if images.ndim == 5 else 1
  flat = images.reshape(-1, *images.shape[-3:])
  logits = state.apply_fn(
    {'params': state.params, 'batch_stats': state.batch_stats},
    flat,
    train=False,
  )
  probs = jax.nn.softmax(logits).reshape(images.shape[0], crops, -1).mean(1)
  label_prob = jnp.take_along_axis(probs, batch['label'][:, None], -1)[:, 0]
  return {
    'prediction': jnp.argmax(probs, -1).astype(jnp.int32),
    'loss': -jnp.log(jnp.maximum(label_prob, 1e-12)),
  }
