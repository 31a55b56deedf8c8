"""The fast layers equal Flax's own (nn.Conv, nn.BatchNorm + ReLU, pooling)."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from densenet_flax import layers


def normal(seed, shape, scale=1.0, offset=0.0):
  return offset + scale * jax.random.normal(jax.random.key(seed), shape)


@pytest.mark.parametrize(
  'kernel,strides,padding',
  [
    ((1, 1), (1, 1), ((0, 0), (0, 0))),
    ((3, 3), (1, 1), ((1, 1), (1, 1))),
    ((7, 7), (2, 2), ((3, 3), (3, 3))),
  ],
)
@pytest.mark.parametrize(
  'kernels,positions',
  [
    ('cpu', layers.KERNEL_GRAD_POSITIONS),
    ('cpu', 100),
    ('generic', layers.KERNEL_GRAD_POSITIONS),
  ],
)
def test_conv_equals_nn_conv(
  kernel, strides, padding, kernels, positions, monkeypatch
):
  # positions=100 splits the CPU kernels' kernel gradients into batch chunks.
  monkeypatch.setattr(layers, 'KERNEL_GRAD_POSITIONS', positions)
  monkeypatch.setenv(layers.KERNELS_ENV, kernels)
  x = normal(0, (6, 9, 9, 5))
  ours = layers.Conv(4, kernel, strides=strides, padding=padding)
  ref = nn.Conv(4, kernel, strides=strides, padding=padding, use_bias=False)
  params = ours.init(jax.random.key(1), x)
  assert jax.tree_util.tree_map(jnp.shape, params) == jax.tree_util.tree_map(
    jnp.shape, ref.init(jax.random.key(1), x)
  )
  y = ours.apply(params, x)
  np.testing.assert_allclose(y, ref.apply(params, x), atol=1e-5, rtol=1e-5)
  if positions == 100 and kernel != (1, 1):  # chunks were taken
    assert layers.kernel_grad_chunks(*y.shape[:3]) > 1
  grad = lambda m: jax.grad(
    lambda p, x: jnp.sum(m.apply(p, x) ** 2), argnums=(0, 1)
  )(params, x)
  for a, b in zip(
    jax.tree_util.tree_leaves(grad(ours)), jax.tree_util.tree_leaves(grad(ref))
  ):
    np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-5)


def test_kernel_grad_chunks_divide_the_batch_into_8k_positions():
  assert layers.KERNEL_GRAD_POSITIONS == 8192
  # DenseNet-121's first block at 224 px (batch 8), fer_densenet's (batch 64).
  assert layers.kernel_grad_chunks(8, 56, 56) == 4
  assert layers.kernel_grad_chunks(64, 24, 24) == 8
  assert layers.kernel_grad_chunks(8, 28, 28) == 1  # 6,272 positions
  assert layers.kernel_grad_chunks(13, 56, 56) == 13  # a prime batch
  assert layers.kernel_grad_chunks(1, 224, 224) == 1
  for batch in range(1, 70):
    for size in (1, 6, 24, 56):
      chunks = layers.kernel_grad_chunks(batch, size, size)
      assert batch % chunks == 0
      assert (
        batch // chunks * size * size <= layers.KERNEL_GRAD_POSITIONS
        or chunks == batch
      )
      # ... and no fewer chunks would do.
      assert all(
        batch % fewer
        or batch // fewer * size * size > layers.KERNEL_GRAD_POSITIONS
        for fewer in range(1, chunks)
      )


@pytest.mark.parametrize('train', [True, False])
@pytest.mark.parametrize('split', [None, (3, 4, 2)])
def test_batch_norm_relu_equals_flax(train, split):
  """Outputs, statistics updates and gradients, on one array or on pieces."""
  x = normal(0, (4, 5, 5, 9), scale=2.0, offset=0.5)
  pieces = (
    (x,)
    if split is None
    else tuple(jnp.split(x, np.cumsum(split)[:-1], axis=-1))
  )
  ours = layers.BatchNormReLU(momentum=0.9, epsilon=1e-5)
  variables = ours.init(jax.random.key(0), x, use_running_average=False)
  variables = {
    'params': {'scale': normal(1, (9,)), 'bias': normal(2, (9,), 0.3)},
    'batch_stats': {
      'mean': normal(3, (9,), 0.1),
      'var': 1 + jnp.abs(normal(4, (9,))),
    },
  }
  ref = nn.BatchNorm(momentum=0.9, epsilon=1e-5)
  target = normal(5, x.shape)

  def loss_ours(params, pieces):
    y, updates = ours.apply(
      {'params': params, 'batch_stats': variables['batch_stats']},
      list(pieces),
      use_running_average=not train,
      mutable=['batch_stats'],
    )
    return jnp.sum(y * target), (y, updates)

  def loss_ref(params, x):
    y, updates = ref.apply(
      {'params': params, 'batch_stats': variables['batch_stats']},
      x,
      use_running_average=not train,
      mutable=['batch_stats'],
    )
    y = nn.relu(y)
    return jnp.sum(y * target), (y, updates)

  (_, (y_a, upd_a)), (gp_a, gx_a) = jax.value_and_grad(
    loss_ours, argnums=(0, 1), has_aux=True
  )(variables['params'], pieces)
  (_, (y_b, upd_b)), (gp_b, gx_b) = jax.value_and_grad(
    loss_ref, argnums=(0, 1), has_aux=True
  )(variables['params'], x)
  np.testing.assert_allclose(y_a, y_b, atol=1e-5, rtol=1e-5)
  for key in ('mean', 'var'):
    np.testing.assert_allclose(
      upd_a['batch_stats'][key], upd_b['batch_stats'][key], atol=1e-6, rtol=1e-6
    )
  for key in ('scale', 'bias'):
    np.testing.assert_allclose(gp_a[key], gp_b[key], atol=1e-4, rtol=1e-5)
  np.testing.assert_allclose(
    jnp.concatenate(gx_a, -1), gx_b, atol=1e-5, rtol=1e-5
  )
  assert float(jnp.abs(gx_b).max()) > 0.1


def test_shared_moments_equal_recomputed_ones():
  """Moments computed once per piece give the same output and gradients."""
  pieces = (normal(0, (3, 4, 4, 2)), normal(1, (3, 4, 4, 3), 2.0, 1.0))
  bn = layers.BatchNormReLU()
  variables = bn.init(
    jax.random.key(0), list(pieces), use_running_average=False
  )

  def run(shared, pieces):
    moments = [layers.moments(p) for p in pieces] if shared else None
    y, _ = bn.apply(
      variables,
      list(pieces),
      use_running_average=False,
      piece_moments=moments,
      mutable=['batch_stats'],
    )
    return jnp.sum(jnp.sin(y))

  for shared in (True, False):
    np.testing.assert_allclose(
      run(shared, pieces), run(True, pieces), rtol=1e-6
    )
  g_shared = jax.grad(functools.partial(run, True))(pieces)
  g_own = jax.grad(functools.partial(run, False))(pieces)
  for a, b in zip(g_shared, g_own):
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_bfloat16_batch_norm_relu_keeps_float32_statistics():
  x = normal(0, (2, 3, 3, 4)).astype(jnp.bfloat16)
  bn = layers.BatchNormReLU(dtype=jnp.bfloat16)
  variables = bn.init(jax.random.key(0), x, use_running_average=False)
  y, updates = bn.apply(
    variables, x, use_running_average=False, mutable=['batch_stats']
  )
  assert y.dtype == jnp.bfloat16
  assert updates['batch_stats']['mean'].dtype == jnp.float32
  grad = jax.grad(
    lambda x: jnp.sum(
      bn.apply(
        variables, x, use_running_average=False, mutable=['batch_stats']
      )[0].astype(jnp.float32)
    )
  )(x)
  assert grad.dtype == jnp.bfloat16


@pytest.mark.parametrize('shape', [(2, 9, 9, 3), (2, 8, 10, 3), (3, 7, 6, 2)])
@pytest.mark.parametrize('relu', [False, True])  # True: many tied zeros
def test_pools_equal_reduce_window_pools(shape, relu):
  x = normal(0, shape)
  if relu:
    x = jnp.maximum(x, 0)
  cases = [
    (
      layers.max_pool_3x3_s2,
      lambda x: nn.max_pool(
        x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1))
      ),
    ),
    (layers.max_pool_2x2, lambda x: nn.max_pool(x, (2, 2), strides=(2, 2))),
    (layers.avg_pool_2x2, lambda x: nn.avg_pool(x, (2, 2), strides=(2, 2))),
  ]
  for ours, ref in cases:
    y, vjp = jax.vjp(jax.jit(ours), x)
    y_ref, vjp_ref = jax.vjp(ref, x)
    np.testing.assert_array_equal(y, y_ref)
    g = normal(1, y.shape)
    # The gradient goes to the first maximum of each window, as
    # reduce_window's select-and-scatter sends it.
    np.testing.assert_allclose(vjp(g)[0], vjp_ref(g)[0], atol=1e-6)


@pytest.mark.parametrize('impl', ['threefry2x32', 'rbg'])
@pytest.mark.parametrize('shape', [(), (1,), (3, 5, 7), (2, 6, 6, 48)])
def test_bernoulli_equals_jax_random_bernoulli(impl, shape):
  """Dropout's keep masks are jax.random.bernoulli's, bit for bit, eagerly
  and jitted, from typed keys, folded keys and raw uint32 keys."""
  jitted = jax.jit(layers.bernoulli, static_argnums=(1, 2))
  for seed in range(3):
    key = jax.random.fold_in(jax.random.key(seed, impl=impl), 7 * seed)
    for p in (0.8, 0.5, 0.123):
      want = jax.random.bernoulli(key, p, shape)
      np.testing.assert_array_equal(layers.bernoulli(key, p, shape), want)
      np.testing.assert_array_equal(jitted(key, p, shape), want)
  raw = jax.random.PRNGKey(5)
  np.testing.assert_array_equal(
    layers.bernoulli(raw, 0.7, shape), jax.random.bernoulli(raw, 0.7, shape)
  )


def test_bernoulli_hashes_in_straight_line_code_on_cpu():
  """On CPU a threefry key's mask is drawn by the written-out hash, with no
  random_bits op (JAX's rolled loop); rbg keys keep JAX's one op."""
  assert jax.default_backend() == 'cpu' and layers.kernel_set() == 'cpu'
  assert layers._threefry_bernoulli_is_jax()
  draw = lambda k: layers.bernoulli(k, 0.8, (4, 6))  # noqa: E731
  threefry = str(jax.make_jaxpr(draw)(jax.random.key(0)))
  assert 'random_bits' not in threefry and 'shift_right_logical' in threefry
  rbg = str(jax.make_jaxpr(draw)(jax.random.key(0, impl='rbg')))
  assert 'random_bits' in rbg


def test_kernel_choice_comes_from_the_environment_or_a_context(monkeypatch):
  monkeypatch.delenv(layers.KERNELS_ENV, raising=False)
  assert layers.kernel_choice() == 'auto'
  assert layers.kernel_set() == 'cpu'  # auto, on this CPU backend
  monkeypatch.setenv(layers.KERNELS_ENV, ' Generic ')
  assert layers.kernel_choice() == 'generic' == layers.kernel_set()
  with layers.use_kernels('cpu'):  # the context wins over the environment
    assert layers.kernel_set() == 'cpu'
    with layers.use_kernels('auto'):
      assert layers.kernel_choice() == 'auto'
  assert layers.kernel_set() == 'generic'
  monkeypatch.setenv(layers.KERNELS_ENV, 'gpu')
  with pytest.raises(
    ValueError,
    match=r"DENSENET_FLAX_KERNELS='gpu': "
    r'expected one of auto, generic, cpu',
  ):
    layers.kernel_set()
  with pytest.raises(ValueError, match="use_kernels='tpu'"):
    with layers.use_kernels('tpu'):
      pass


def test_each_kernel_set_traces_its_own_pieces():
  """The switch reaches every piece that has a CPU variant: the 3x3 conv's
  chunked kernel gradient (a custom VJP), dropout's inline hash, and the
  memory-efficient block's 3x3 conv; 'generic' traces lax's conv and
  jax.random's draw, as on a GPU or TPU. Each trace is of a new function:
  JAX reuses the trace of a function it has seen (read at trace time)."""
  x = jnp.zeros((2, 6, 6, 3))
  conv = layers.Conv(4, (3, 3), padding=((1, 1), (1, 1)))
  params = conv.init(jax.random.key(0), x)
  from densenet_flax import shared_buffer

  spec = shared_buffer.BlockSpec(
    num_layers=1,
    growth_rate=2,
    bottleneck=False,
    drop_rate=0.0,
    epsilon=1e-5,
    dtype=jnp.float32,
  )
  block_params = shared_buffer.stack_params(
    spec,
    [
      {
        'norm1': {'scale': jnp.ones(3), 'bias': jnp.zeros(3)},
        'conv1': {'kernel': jnp.ones((3, 3, 3, 2))},
      }
    ],
    3,
  )
  traced = {}
  for kernels in ('cpu', 'generic'):
    with layers.use_kernels(kernels):
      traced[kernels] = (
        str(jax.make_jaxpr(lambda p: conv.apply(p, x))(params)),
        str(
          jax.make_jaxpr(lambda k: layers.bernoulli(k, 0.8, (4, 6)))(
            jax.random.key(0)
          )
        ),
        str(
          jax.make_jaxpr(
            jax.grad(
              lambda p: jnp.sum(
                shared_buffer.dense_block(spec, p, x, None).buffer
              )
            )
          )(block_params)
        ),
      )
  (conv_cpu, draw_cpu, block_cpu) = traced['cpu']
  (conv_generic, draw_generic, block_generic) = traced['generic']
  assert 'custom_vjp_call' in conv_cpu and 'custom_vjp' not in conv_generic
  assert 'random_bits' not in draw_cpu and 'random_bits' in draw_generic
  # The CPU 3x3 conv writes both gradients as convolutions in the forward
  # pass's layout; autodiff's (generic) transposes into other layouts.
  forward_layout = 'lhs_spec=(0, 3, 1, 2), rhs_spec=(3, 2, 0, 1)'
  for jaxpr in (block_cpu, block_generic):
    # The forward pass, its recomputation in the backward, two gradients.
    assert jaxpr.count('conv_general_dilated[') == 4
  assert block_cpu.count(forward_layout) == 4
  assert block_generic.count(forward_layout) == 2


def test_bernoulli_checks_itself_inside_a_guarded_step():
  """The once-per-process check against JAX also runs when first needed
  inside a jitted step under train.py's transfer guard."""
  layers._threefry_bernoulli_is_jax.cache_clear()
  key = jax.random.key(2)
  with jax.transfer_guard('disallow'):
    mask = jax.jit(lambda k: layers.bernoulli(k, 0.8, (3, 4)))(key)
  assert layers._threefry_bernoulli_is_jax.cache_info().currsize == 1
  np.testing.assert_array_equal(mask, jax.random.bernoulli(key, 0.8, (3, 4)))


def test_dropout_equals_flax_dropout(kernel_set):
  """layers.Dropout makes nn.Dropout's masks: same keys by module path
  (auto-named 'Dropout_0', 'Dropout_1' and an explicit name), same scaling,
  and the same gradient."""

  def net(dropout):
    class Net(nn.Module):
      @nn.compact
      def __call__(self, x):
        x = dropout(0.3)(x, deterministic=False)
        x = dropout(0.6)(x * 2, deterministic=False)
        named = dropout(0.2, name='dropout')
        return named(named(x, deterministic=False), deterministic=False)

    return Net()

  x = normal(0, (4, 5, 5, 8))
  rngs = {'dropout': jax.random.key(11)}
  ours = lambda x: net(layers.Dropout).apply({}, x, rngs=rngs)  # noqa: E731
  flax_ = lambda x: net(nn.Dropout).apply({}, x, rngs=rngs)  # noqa: E731
  np.testing.assert_array_equal(ours(x), flax_(x))
  assert 0 < float(jnp.mean(ours(x) == 0)) < 1
  np.testing.assert_array_equal(
    jax.grad(lambda x: jnp.sum(ours(x) ** 2))(x),
    jax.grad(lambda x: jnp.sum(flax_(x) ** 2))(x),
  )
  np.testing.assert_array_equal(
    layers.Dropout(0.5).apply({}, x, deterministic=True), x
  )
  np.testing.assert_array_equal(
    layers.Dropout(1.0).apply({}, x, deterministic=False), jnp.zeros_like(x)
  )
