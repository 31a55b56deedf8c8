"""The pure pieces of training: optimizer, schedules, losses, steps (no TF)."""

import functools
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from densenet_flax import config_keys
from densenet_flax import models
from densenet_flax import optim
from densenet_flax import steps


def opt_config(**overrides):
  config = config_keys.base_config()
  config.update(overrides)
  return config


def test_model_step_and_optimizer_import_no_tensorflow():
  code = (
    'import sys; import densenet_flax.models, densenet_flax.steps, '
    'densenet_flax.optim, densenet_flax.parallel, densenet_flax.convert, '
    'densenet_flax.checkpointing, densenet_flax.config, '
    'densenet_flax.metrics, densenet_flax.workdir, '
    'densenet_flax.inference, densenet_flax.faces; '
    "bad = [m for m in sys.modules if m.split('.')[0] in "
    "('tensorflow', 'keras', 'tensorflow_datasets')]; "
    'assert not bad, bad'
  )
  subprocess.run([sys.executable, '-c', code], check=True)


def test_paper_piecewise_schedule():
  config = opt_config(
    learning_rate=0.1,
    num_epochs=300,
    batch_size=64,
    lr_batch_reference=64,
    schedule='piecewise',
    lr_boundaries=(0.5, 0.75),
  )
  schedule = optim.create_schedule(config, steps_per_epoch=10)  # 3000 steps
  assert schedule(0) == pytest.approx(0.1)
  assert schedule(1499) == pytest.approx(0.1)
  assert schedule(1500) == pytest.approx(0.01)
  assert schedule(2249) == pytest.approx(0.01)
  assert schedule(2250) == pytest.approx(0.001)


def test_learning_rate_scales_with_global_batch():
  config = opt_config(learning_rate=0.1, batch_size=512, lr_batch_reference=256)
  assert optim.learning_rate(config) == pytest.approx(0.2)
  config.lr_batch_reference = 0
  assert optim.learning_rate(config) == pytest.approx(0.1)


def test_warmup_then_cosine_and_warmup_then_piecewise():
  cosine = optim.create_schedule(
    opt_config(
      schedule='cosine', warmup_epochs=1, num_epochs=10, learning_rate=1.0
    ),
    steps_per_epoch=100,
  )
  assert cosine(0) == 0 and cosine(50) == pytest.approx(0.5)
  assert cosine(100) == pytest.approx(1.0)
  assert cosine(1000) == pytest.approx(0.0, abs=1e-6)
  piecewise = optim.create_schedule(
    opt_config(
      schedule='piecewise',
      warmup_epochs=1,
      num_epochs=10,
      learning_rate=1.0,
      lr_boundaries=(0.5,),
    ),
    steps_per_epoch=100,
  )
  assert piecewise(50) == pytest.approx(0.5)
  assert piecewise(499) == pytest.approx(1.0)
  assert piecewise(500) == pytest.approx(0.1)


def tiny_params():
  model = models.create_model(
    'densenet_bc_100_12', num_classes=3, block_sizes=(1,), growth_rate=2
  )
  return jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 8, 8, 1)))[
    'params'
  ]


def test_weight_decay_only_on_kernels():
  mask = jax.tree_util.tree_leaves_with_path(optim.decay_mask(tiny_params()))
  decayed = {jax.tree_util.keystr(p) for p, m in mask if m}
  assert decayed and all(k.endswith("['kernel']") for k in decayed)
  assert any("['classifier']['kernel']" in k for k in decayed)
  assert not any('norm' in k for k in decayed)


@pytest.mark.parametrize('mode', ['l2', 'decoupled'])
def test_sgd_weight_decay_modes(mode):
  params = {
    'conv': {'kernel': jnp.array([1.0, -2.0])},
    'norm': {'scale': jnp.array([3.0])},
  }
  grads = {
    'conv': {'kernel': jnp.array([0.5, 0.5])},
    'norm': {'scale': jnp.array([0.5])},
  }
  config = opt_config(
    learning_rate=0.1,
    momentum=0.9,
    nesterov=False,
    weight_decay=0.01,
    weight_decay_mode=mode,
    schedule='constant',
  )
  tx, _ = optim.create_optimizer(config, steps_per_epoch=1)
  opt_state = tx.init(params)
  for _ in range(2):
    updates, opt_state = tx.update(grads, opt_state, params)
  kernel = np.array([1.0, -2.0])
  g = 0.5
  if mode == 'l2':  # decay enters the momentum buffer
    m1 = g + 0.01 * kernel
    m2 = 0.9 * m1 + g + 0.01 * kernel
    want = -0.1 * m2
  else:  # decay added after momentum
    want = -0.1 * (0.9 * g + g + 0.01 * kernel)
  np.testing.assert_allclose(updates['conv']['kernel'], want, rtol=1e-6)
  np.testing.assert_allclose(
    updates['norm']['scale'], -0.1 * 1.9 * 0.5, rtol=1e-6
  )


def test_class_weighted_loss_is_the_weighted_mean():
  logits = jnp.array([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 3.0]])
  labels = jnp.array([0, 1, 1])
  weights = np.array([1.0, 4.0, 0.5], np.float32)
  ce = steps.cross_entropy(logits, jax.nn.one_hot(labels, 3))
  want = float(jnp.sum(weights[labels] * ce) / jnp.sum(weights[labels]))

  class Fixed:
    def apply(self, variables, x, **kwargs):
      return logits + 0 * variables['params']['w'], {'batch_stats': {}}

  state = steps.TrainState.create(
    apply_fn=Fixed().apply,
    params={'w': jnp.zeros(())},
    tx=optax.sgd(0.0),
    batch_stats={},
  )
  _, metrics = steps.train_step(
    state,
    {'image': jnp.zeros((3, 1)), 'label': labels},
    jax.random.key(0),
    spec=steps.TrainSpec(num_classes=3, class_weights=weights),
  )
  assert float(metrics['loss']) == pytest.approx(want, rel=1e-6)


def test_label_smoothing_and_mixup_targets():
  targets = steps.soft_targets(jnp.array([2]), 4, 0.1)
  np.testing.assert_allclose(targets, [[0.025, 0.025, 0.925, 0.025]])
  images = jnp.arange(4.0).reshape(4, 1)
  mixed, mixed_targets = steps.mixup(
    jax.random.key(0), images, jax.nn.one_hot(jnp.arange(4), 4), 0.4
  )
  np.testing.assert_allclose(mixed_targets.sum(-1), 1.0, rtol=1e-6)
  assert float(mixed.sum()) == pytest.approx(6.0, rel=1e-5)  # a permutation


def small_state(dtype=jnp.float32, drop_rate=0.0):
  model = models.create_model(
    'densenet_bc_100_12',
    num_classes=4,
    block_sizes=(2,),
    growth_rate=4,
    dtype=dtype,
    drop_rate=drop_rate,
  )
  return steps.create_train_state(
    jax.random.key(0), model, optax.sgd(0.1, 0.9), (8, 8, 1)
  )


def test_eval_step_averages_identical_crops_to_the_single_crop():
  state = small_state()
  x = jax.random.normal(jax.random.key(1), (3, 8, 8, 1))
  labels = jnp.array([0, 1, 2])
  eval_step = jax.jit(steps.eval_step)  # op by op, it took 9 s
  single = eval_step(state, {'image': x, 'label': labels})
  tiled = eval_step(
    state, {'image': jnp.repeat(x[:, None], 10, 1), 'label': labels}
  )
  np.testing.assert_array_equal(single['prediction'], tiled['prediction'])
  np.testing.assert_allclose(single['loss'], tiled['loss'], rtol=1e-5)


def test_half_precision_step_keeps_float32_state():
  state = small_state(jnp.bfloat16, drop_rate=0.2)
  batch = {
    'image': jax.random.normal(jax.random.key(1), (4, 8, 8, 1)),
    'label': jnp.array([0, 1, 2, 3]),
  }
  step = jax.jit(
    functools.partial(steps.train_step, spec=steps.TrainSpec(num_classes=4))
  )
  new, metrics = step(state, batch, jax.random.key(2))
  for leaf in jax.tree_util.tree_leaves(
    (new.params, new.batch_stats, new.opt_state)
  ):
    assert leaf.dtype == jnp.float32
  assert np.isfinite(float(metrics['loss']))
  assert int(new.step) == 1


@pytest.mark.parametrize('bad', [np.nan, np.inf, -np.inf])
def test_all_finite_finds_one_bad_value_in_any_leaf(bad):
  kernel, small = jnp.ones((3, 2)), jnp.zeros((4,), jnp.bfloat16)
  stats = {'mean': jnp.zeros((2,)), 'var': jnp.ones((2,))}

  def params(kernel, small):
    return {'a': {'kernel': kernel}, 'b': small}

  assert float(steps.all_finite(params(kernel, small), stats)) == 1.0
  assert float(steps.all_finite({}, {})) == 1.0
  for broken in (
    params(kernel.at[2, 1].set(bad), small),
    params(kernel, small.at[0].set(bad)),
  ):
    assert float(steps.all_finite(broken, stats)) == 0.0
  stats['var'] = stats['var'].at[1].set(bad)
  assert float(steps.all_finite(params(kernel, small), stats)) == 0.0


def test_merge_variables_keeps_new_head_and_checks_shapes():
  fresh = {'params': {'a': jnp.zeros(2), 'head': jnp.zeros(3)}}
  merged = steps.merge_variables(fresh, {'params': {'a': np.ones(2)}})
  np.testing.assert_array_equal(merged['params']['a'], [1, 1])
  np.testing.assert_array_equal(merged['params']['head'], [0, 0, 0])
  with pytest.raises(ValueError, match='params/a has shape'):
    steps.merge_variables(fresh, {'params': {'a': np.ones(3)}})


def test_balanced_class_weights_are_inverse_frequencies():
  from densenet_flax import training

  class Data:
    class spec:
      num_classes = 3

    def train_label_counts(self):
      return np.array([60, 30, 10])

  config = opt_config(class_weighting='balanced')
  weights = training.class_weights(config, Data())
  np.testing.assert_allclose(weights, [100 / 180, 100 / 90, 100 / 30])
  assert training.class_weights(opt_config(), Data()) is None


# --- FER+ label modes ---------------------------------------------------------

MODE_LOGITS = np.array(
  [
    [2.0, 1.0, 0.5, 0.0, -1.0, 0.0, 0.3, -0.5],
    [0.1, 0.4, 1.5, -0.2, 0.0, 0.7, -1.0, 0.2],
  ]
)
SOFT = np.array(
  [[0.5, 0.5, 0, 0, 0, 0, 0, 0], [0.4, 0.0, 0.3, 0, 0, 0.3, 0, 0]], np.float32
)


def _np_log_softmax(logits):
  shifted = logits - logits.max(-1, keepdims=True)
  return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def _fixed_logits_loss(batch, **kwargs):
  """train_step's loss for a model that returns MODE_LOGITS."""
  logits = jnp.asarray(MODE_LOGITS, jnp.float32)

  class Fixed:
    def apply(self, variables, x, **kw):
      return logits + 0 * variables['params']['w'], {'batch_stats': {}}

  state = steps.TrainState.create(
    apply_fn=Fixed().apply,
    params={'w': jnp.zeros(())},
    tx=optax.sgd(0.0),
    batch_stats={},
  )
  batch = {'image': jnp.zeros((2, 1)), **batch}
  _, metrics = steps.train_step(
    state,
    batch,
    jax.random.key(0),
    spec=steps.TrainSpec(num_classes=8, **kwargs),
  )
  return float(metrics['loss'])


@pytest.mark.parametrize(
  'mode', ['majority', 'probability', 'crossentropy', 'multi_target']
)
def test_label_mode_losses_by_hand(mode):
  log_p = _np_log_softmax(MODE_LOGITS)
  labels = np.array([0, 2])
  if mode == 'majority':  # one-hot of the labels, no target
    batch = {'label': labels}
    want = -np.mean(log_p[[0, 1], labels])
  elif mode == 'probability':  # the drawn label's one-hot is the target
    drawn = np.array([1, 5])
    batch = {'label': drawn, 'target': np.eye(8, dtype=np.float32)[drawn]}
    want = -np.mean(log_p[[0, 1], drawn])
  elif mode == 'crossentropy':
    batch = {'label': labels, 'target': SOFT}
    want = -np.mean((SOFT * log_p).sum(-1))
  else:  # -log max_k t_k p_k, t = 0.999 * [d > 0] + 0.001
    batch = {'label': labels, 'target': SOFT}
    t = 0.999 * (SOFT > 0) + 0.001
    want = -np.mean(np.log((t * np.exp(log_p)).max(-1)))
  got = _fixed_logits_loss(batch, label_mode=mode)
  assert got == pytest.approx(want, rel=1e-5)


def test_multi_target_loss_differs_from_cross_entropy():
  # Row 0 accepts classes 0 and 1: only the likelier one (0) counts.
  log_p = _np_log_softmax(MODE_LOGITS)
  assert -log_p[0, 0] < -(SOFT[0] * log_p[0]).sum()
  np.testing.assert_allclose(
    steps.multi_target_loss(
      jnp.asarray(MODE_LOGITS), steps.multi_target_weights(jnp.asarray(SOFT))
    ),
    -np.log((np.exp(log_p) * (0.999 * (SOFT > 0) + 0.001)).max(-1)),
    rtol=1e-5,
  )


def test_label_modes_with_smoothing_class_weights_and_mixup():
  log_p = _np_log_softmax(MODE_LOGITS)
  # Smoothing applies to the soft target, and to multi_target's t.
  smooth = 0.9 * SOFT + 0.1 / 8
  got = _fixed_logits_loss(
    {'label': np.array([0, 0]), 'target': SOFT},
    label_mode='crossentropy',
    label_smoothing=0.1,
  )
  assert got == pytest.approx(-np.mean((smooth * log_p).sum(-1)), rel=1e-5)
  t = 0.9 * (0.999 * (SOFT > 0) + 0.001) + 0.1 / 8
  got = _fixed_logits_loss(
    {'label': np.array([0, 0]), 'target': SOFT},
    label_mode='multi_target',
    label_smoothing=0.1,
  )
  assert got == pytest.approx(
    -np.mean(np.log((t * np.exp(log_p)).max(-1))), rel=1e-5
  )
  # Class weights: each example weighs targets @ class_weights.
  class_weights = np.arange(1, 9, dtype=np.float32)
  w = SOFT @ class_weights
  got = _fixed_logits_loss(
    {'label': np.array([0, 0]), 'target': SOFT},
    label_mode='crossentropy',
    class_weights=class_weights,
  )
  assert got == pytest.approx(
    np.sum(w * -(SOFT * log_p).sum(-1)) / w.sum(), rel=1e-5
  )
  # Mixup mixes the targets and multi_target's t with one draw.
  for mode in ('crossentropy', 'multi_target'):
    assert np.isfinite(
      _fixed_logits_loss(
        {'label': np.array([0, 0]), 'target': SOFT},
        label_mode=mode,
        mixup_alpha=0.4,
      )
    )


# --- dynamic loss scaling -------------------------------------------------------


def scaled_state(scale, growth_interval=2000, ema=False):
  """A float16 state whose loss is scaled by `scale` (2**40 overflows the
  float16 backward pass of this model; 2**8 does not)."""
  model = models.create_model(
    'densenet_bc_100_12',
    num_classes=4,
    block_sizes=(2,),
    growth_rate=4,
    dtype=jnp.float16,
  )
  state = steps.create_train_state(
    jax.random.key(0),
    model,
    optax.sgd(0.1, 0.9),
    (8, 8, 1),
    use_dynamic_scale=True,
    ema=ema,
  )
  return state.replace(
    dynamic_scale=steps.new_dynamic_scale(
      scale=scale, growth_interval=growth_interval
    )
  )


SCALED_BATCH = {
  'image': np.random.default_rng(1)
  .normal(size=(4, 8, 8, 1))
  .astype(np.float32),
  'label': np.arange(4),
}


def test_an_overflowing_step_is_skipped_and_halves_the_scale():
  step = jax.jit(
    functools.partial(
      steps.train_step, spec=steps.TrainSpec(num_classes=4, ema_decay=0.9)
    )
  )
  state = scaled_state(2.0**40, ema=True)
  new, metrics = step(state, SCALED_BATCH, jax.random.key(2))
  assert float(metrics['grads_finite']) == 0.0
  assert np.isfinite(float(metrics['loss']))  # the loss itself was fine
  assert float(metrics['finite']) == 1.0 and float(metrics['loss_scale']) == (
    2.0**40
  )
  assert float(new.dynamic_scale.scale) == 2.0**39
  assert int(new.dynamic_scale.fin_steps) == 0 and int(new.step) == 1
  kept = ('params', 'batch_stats', 'opt_state', 'ema')
  for name in kept:  # nothing the update touches has moved
    for a, b in zip(
      jax.tree_util.tree_leaves(getattr(state, name)),
      jax.tree_util.tree_leaves(getattr(new, name)),
    ):
      np.testing.assert_array_equal(a, b, err_msg=name)
  # The same step at a scale the float16 backward holds changes them all.
  new, metrics = step(
    scaled_state(2.0**8, ema=True), SCALED_BATCH, jax.random.key(2)
  )
  assert float(metrics['grads_finite']) == 1.0
  assert float(new.dynamic_scale.scale) == 2.0**8
  for name in kept:
    assert not all(
      np.array_equal(a, b)
      for a, b in zip(
        jax.tree_util.tree_leaves(getattr(state, name)),
        jax.tree_util.tree_leaves(getattr(new, name)),
      )
    ), name


def test_the_scale_grows_after_its_period_of_finite_steps():
  """Flax's rule: after `growth_interval` finite steps in a row, the next
  finite step doubles the scale and starts counting again."""
  step = jax.jit(
    functools.partial(steps.train_step, spec=steps.TrainSpec(num_classes=4))
  )
  state = scaled_state(2.0**8, growth_interval=2)
  scales, fin_steps = [], []
  for i in range(6):
    state, metrics = step(state, SCALED_BATCH, jax.random.key(i))
    assert float(metrics['grads_finite']) == 1.0
    scales.append(float(state.dynamic_scale.scale))
    fin_steps.append(int(state.dynamic_scale.fin_steps))
  assert fin_steps == [1, 2, 0, 1, 2, 0]
  assert scales == [2.0**8, 2.0**8, 2.0**9, 2.0**9, 2.0**9, 2.0**10]
