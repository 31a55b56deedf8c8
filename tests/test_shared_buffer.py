"""shared_buffer.dense_block: its hand-written VJP against autodiff of its forward.

The model-level checks (memory_efficient=True equals the list path, on one
device and on several) are in test_models.py and test_multidevice.py; these
cover what those cannot: dropout, every output's cotangent, bf16.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from densenet_flax import layers
from densenet_flax import shared_buffer

C0, K, LAYERS = 6, 4, 3


def block_inputs(
  bottleneck,
  dtype=jnp.float32,
  seed=0,
  num_layers=LAYERS,
  c0=C0,
  k=K,
  image=(3, 5, 5),
):
  """Random per-layer params and a block input x0 of shape [*image, c0].

  Drawn with numpy: eager jax.random draws compile once per shape, which
  took a 24-layer block's inputs 25 s.
  """
  rng = np.random.default_rng(seed)
  normal = lambda shape, scale=1.0: jnp.asarray(  # noqa: E731
    scale * rng.standard_normal(shape), jnp.float32
  )
  per_layer = []
  for i in range(num_layers):
    c = c0 + i * k
    p = {'norm1': {'scale': 1 + normal((c,), 0.2), 'bias': normal((c,), 0.2)}}
    if bottleneck:
      p['conv1'] = {'kernel': normal((1, 1, c, 4 * k), 0.3)}
      p['norm2'] = {
        'scale': 1 + normal((4 * k,), 0.2),
        'bias': normal((4 * k,), 0.2),
      }
      p['conv2'] = {'kernel': normal((3, 3, 4 * k, k), 0.2)}
    else:
      p['conv1'] = {'kernel': normal((3, 3, c, k), 0.2)}
    per_layer.append(p)
  x0 = normal((*image, c0)).astype(dtype)
  return per_layer, x0


def spec(
  bottleneck,
  drop_rate=0.0,
  dtype=jnp.float32,
  segment_size=2,
  num_layers=LAYERS,
  growth_rate=K,
):
  """By default loops of 2 layers: layers 1-2 read the buffer's first
  C0 + K channels, layer 3 C0 + 2K."""
  return shared_buffer.BlockSpec(
    num_layers=num_layers,
    growth_rate=growth_rate,
    bottleneck=bottleneck,
    drop_rate=drop_rate,
    epsilon=1e-5,
    dtype=dtype,
    segment_size=segment_size,
  )


def vjp_of(s, fn, per_layer, x0, key, seed=1):
  """fn's outputs and its VJP for random cotangents on every output."""
  outputs, vjp = jax.vjp(
    lambda p, x: fn(shared_buffer.stack_params(s, p, C0), x, key), per_layer, x0
  )
  keys = jax.random.split(jax.random.key(seed), len(outputs))
  cotangents = type(outputs)(
    *[
      jax.random.normal(k, o.shape).astype(o.dtype)
      for k, o in zip(keys, outputs)
    ]
  )
  return outputs, vjp(cotangents)


def assert_trees_close(a, b, atol, rtol=0.0):
  flat_a, tree_a = jax.tree_util.tree_flatten(a)
  flat_b, tree_b = jax.tree_util.tree_flatten(b)
  assert tree_a == tree_b
  for x, y in zip(flat_a, flat_b):
    np.testing.assert_allclose(
      np.asarray(x, np.float32), np.asarray(y, np.float32), atol=atol, rtol=rtol
    )


@pytest.mark.parametrize(
  'bottleneck,drop_rate,segment_size,kernels',
  [
    (True, 0.0, 2, 'cpu'),
    (True, 0.5, 2, 'cpu'),
    (True, 0.0, 8, 'cpu'),
    (False, 0.5, 2, 'cpu'),
    (True, 0.5, 2, 'generic'),
    (False, 0.5, 2, 'generic'),
  ],
)
def test_custom_vjp_equals_autodiff_of_the_forward(
  bottleneck, drop_rate, segment_size, kernels, monkeypatch
):
  """Every output's cotangent (maps, their statistics, the bottlenecks') flows
  back as autodiff would, dropout masks included, in one loop or several,
  with either kernel set (the generic one: lax's 3x3 conv gradients and
  jax.random's masks, as on a GPU or TPU)."""
  monkeypatch.setenv(layers.KERNELS_ENV, kernels)
  s = spec(bottleneck, drop_rate, segment_size=segment_size)
  per_layer, x0 = block_inputs(bottleneck)
  key = jax.random.key(7) if drop_rate else None
  custom = jax.jit(
    lambda p, x, k: vjp_of(
      s, lambda *a: shared_buffer.dense_block(s, *a), p, x, k
    )
  )
  reference = jax.jit(
    lambda p, x, k: vjp_of(s, lambda *a: shared_buffer._forward(s, *a), p, x, k)
  )
  (out, grads), (ref_out, ref_grads) = (
    custom(per_layer, x0, key),
    reference(per_layer, x0, key),
  )
  assert_trees_close(out, ref_out, atol=1e-6)
  assert_trees_close(grads, ref_grads, atol=2e-5, rtol=2e-5)
  assert (
    max(float(jnp.abs(g).max()) for g in jax.tree_util.tree_leaves(grads))
    > 1e-2
  )


def test_channels_a_layer_has_not_seen_get_no_gradient():
  """The padded slots of the stacked params (channels beyond a layer's
  inputs) get exactly zero gradient, so the padding changes nothing."""
  s = spec(True)
  per_layer, x0 = block_inputs(True)
  params = shared_buffer.stack_params(s, per_layer, C0)
  grads = jax.jit(
    jax.grad(
      lambda p: jnp.sum(shared_buffer.dense_block(s, p, x0, None).buffer ** 2)
    )
  )(params)
  for (first, end, width), g in zip(s.segments(C0), grads):
    for i in range(end - first):
      seen = C0 + (first + i) * K
      assert seen < width or first + i == end - 1
      for leaf in (g.scale1[i], g.bias1[i], g.kernel1[i]):
        assert float(jnp.abs(leaf[seen:]).max(initial=0.0)) == 0.0
        assert float(jnp.abs(leaf[:seen]).max()) > 0


@pytest.mark.parametrize('positions', [layers.KERNEL_GRAD_POSITIONS, 20])
def test_conv3x3_gradient_equals_lax(positions, monkeypatch):
  # positions=20 sums the kernel gradient over four batch chunks.
  monkeypatch.setattr(layers, 'KERNEL_GRAD_POSITIONS', positions)
  x = jax.random.normal(jax.random.key(0), (4, 5, 6, 7))
  kernel = jax.random.normal(jax.random.key(1), (3, 3, 7, 4))
  dy = jax.random.normal(jax.random.key(2), (4, 5, 6, 4))
  ours = jax.vjp(shared_buffer._conv3x3, x, kernel)
  reference = jax.vjp(shared_buffer._conv3x3_forward, x, kernel)
  np.testing.assert_allclose(ours[0], reference[0], atol=1e-5)
  for a, b in zip(ours[1](dy), reference[1](dy)):
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)


def test_dropout_masks_follow_the_key():
  s = spec(True, 0.5)
  per_layer, x0 = block_inputs(True)
  params = shared_buffer.stack_params(s, per_layer, C0)
  run = jax.jit(lambda k: shared_buffer.dense_block(s, params, x0, k).buffer)
  a, b = run(jax.random.key(1)), run(jax.random.key(2))
  np.testing.assert_array_equal(a, run(jax.random.key(1)))
  np.testing.assert_array_equal(a[..., :C0], x0)  # the input is kept as is
  assert not np.allclose(a[..., C0:], b[..., C0:])
  # About half of each new map is dropped (ReLU zeros come on top).
  no_dropout = jax.jit(
    lambda: shared_buffer.dense_block(spec(True), params, x0, None).buffer
  )()
  assert (
    float(jnp.mean(a[..., C0 : C0 + K] == 0))
    > float(jnp.mean(no_dropout[..., C0 : C0 + K] == 0)) + 0.2
  )


@pytest.mark.parametrize('impl', ['threefry2x32', 'rbg'])
def test_backward_pass_draws_no_random_bits(impl):
  """The forward pass keeps its dropout masks for the backward pass, which
  otherwise draws them all again (about 15% of a `fer_densenet` step).
  Each draw starts by folding the layer's index into the key, whatever
  draws the bits (layers.bernoulli's hash on CPU, JAX's random_bits)."""
  s = spec(True, 0.5)
  per_layer, x0 = block_inputs(True)
  params = shared_buffer.stack_params(s, per_layer, C0)
  key = jax.random.key(3, impl=impl)
  block = lambda p: shared_buffer.dense_block(s, p, x0, key).buffer  # noqa: E731
  draws = lambda jaxpr: str(jaxpr).count('random_fold_in')  # noqa: E731
  forward = draws(jax.make_jaxpr(block)(params))
  assert forward == 2 * len(s.segments(C0))  # two masks per loop body
  assert (
    draws(jax.make_jaxpr(jax.grad(lambda p: jnp.sum(block(p) ** 2)))(params))
    == forward
  )


def test_bfloat16_block_keeps_its_dtypes_and_matches_autodiff():
  """In bf16 the custom VJP agrees with autodiff of the same bf16 forward
  (the gap to float32 is bf16's own: 25% on this 75-pixel batch, for both)."""
  per_layer, x0 = block_inputs(True)
  s = spec(True, dtype=jnp.bfloat16)

  def run(fn):
    return jax.jit(
      lambda p, x: vjp_of(
        s, lambda *a: fn(s, *a), p, x.astype(jnp.bfloat16), None
      )
    )(per_layer, x0)

  out, (gp, gx) = run(shared_buffer.dense_block)
  ref_out, (ref_gp, ref_gx) = run(shared_buffer._forward)
  assert out.buffer.dtype == gx.dtype == jnp.bfloat16
  assert out.mean.dtype == jnp.float32
  for leaf in jax.tree_util.tree_leaves(gp):
    assert leaf.dtype == jnp.float32
  assert_trees_close(out, ref_out, atol=1e-6)
  for a, b in zip(
    jax.tree_util.tree_leaves((gp, gx)),
    jax.tree_util.tree_leaves((ref_gp, ref_gx)),
  ):
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    assert np.abs(a - b).max() < 0.02 * np.abs(b).max()


def test_more_loops_do_not_cost_compiled_memory():
  """A 24-layer block in loops of 4 compiles to no more temp memory than in
  one loop (within 10%; measured 0.95x). Before the backward tied the final
  buffer to each step, XLA hoisted every loop's centred input out of its
  loop and kept them all alive at once: 1.36x one loop's temp here."""
  num_layers, k, c0 = 24, 8, 16
  per_layer, x0 = block_inputs(
    True, num_layers=num_layers, c0=c0, k=k, image=(8, 16, 16)
  )

  def temp(segment_size):
    s = spec(
      True, segment_size=segment_size, num_layers=num_layers, growth_rate=k
    )
    grad = jax.jit(
      jax.grad(
        lambda p, x: jnp.sum(
          shared_buffer.dense_block(
            s, shared_buffer.stack_params(s, p, c0), x, None
          ).buffer
          ** 2
        ),
        argnums=(0, 1),
      )
    )
    compiled = grad.lower(per_layer, x0).compile()
    return compiled.memory_analysis().temp_size_in_bytes

  one_loop, loops_of_4 = temp(num_layers), temp(4)
  assert loops_of_4 <= 1.1 * one_loop, (loops_of_4, one_loop)
