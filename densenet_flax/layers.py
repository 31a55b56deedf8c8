"""The low-level layers of the DenseNet modules, written for speed.

Each has the parameters, statistics and numbers of its Flax counterpart
(nn.Conv without bias, nn.BatchNorm followed by ReLU, nn.max_pool,
nn.avg_pool, nn.Dropout and its masks), so checkpoints, imported weights and
random streams are interchangeable; what differs is how XLA is asked to
compute them. DenseNets spend much of a step in memory-bound work (BN, ReLU,
pooling on wide concatenations), which XLA:CPU otherwise does in more passes
than needed. Measurements: docs/benchmarks.md.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import itertools
import math
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

Array = Any
Dtype = Any

# Kaiming He normal init (fan_in, gain sqrt(2)), as the paper and torchvision.
conv_kernel_init = nn.initializers.variance_scaling(2.0, 'fan_in', 'normal')


# --- which kernels a step is traced with -----------------------------------------

KERNELS_ENV = 'DENSENET_FLAX_KERNELS'
# 'auto': by backend; 'generic': what GPUs and TPUs run, on any backend;
# 'cpu': the pieces tuned for XLA:CPU (conv_cpu, the inline dropout hash,
# shared_buffer's chunked 3x3 gradient), on any backend.
KERNEL_CHOICES = ('auto', 'generic', 'cpu')
_kernels_override: contextvars.ContextVar[str | None] = contextvars.ContextVar(
  'densenet_flax_kernels', default=None
)


def _checked(given: str, where: str) -> str:
  choice = given.strip().lower() or 'auto'
  if choice not in KERNEL_CHOICES:
    raise ValueError(
      f'{where}={given!r}: expected one of {", ".join(KERNEL_CHOICES)}'
    )
  return choice


def kernel_choice() -> str:
  """'auto', 'generic' or 'cpu': `use_kernels`' if inside one, else
  $DENSENET_FLAX_KERNELS (default 'auto')."""
  override = _kernels_override.get()
  if override is not None:
    return override
  return _checked(os.environ.get(KERNELS_ENV, ''), KERNELS_ENV)


def kernel_set() -> str:
  """The kernels a step traced now takes: 'cpu' or 'generic'.

  Read at trace time: a function jit has already traced keeps the kernels
  of its trace. Exporting for another platform (jax.export) runs on the
  CPU backend, so it needs 'generic' to trace what that platform runs.
  """
  choice = kernel_choice()
  if choice == 'auto':
    return 'cpu' if jax.default_backend() == 'cpu' else 'generic'
  return choice


@contextlib.contextmanager
def use_kernels(choice: str) -> Iterator[None]:
  """Traces with `choice`'s kernels ('auto', 'generic', 'cpu') inside the
  block, whatever $DENSENET_FLAX_KERNELS says."""
  token = _kernels_override.set(_checked(choice, 'use_kernels'))
  try:
    yield
  finally:
    _kernels_override.reset(token)


class Conv(nn.Module):
  """A bias-free 2-D convolution, NHWC x HWIO, with the parameters of nn.Conv.

  1x1 stride-1 convolutions (the bottlenecks and transitions, about half of a
  DenseNet's FLOPs) are computed as matrix products: XLA:CPU runs them faster
  that way than as convolutions, forward and backward; on GPU/TPU the two
  lower to the same kernels (docs/benchmarks.md#what-the-steps-design-rests-on). With the CPU kernels (`kernel_set`) the
  others (3x3, the stems) compute their kernel gradient in batch chunks
  (`conv_cpu`).
  """

  features: int
  kernel_size: tuple[int, int]
  strides: tuple[int, int] = (1, 1)
  padding: Any = ((0, 0), (0, 0))
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  kernel_init: Callable[..., Any] = conv_kernel_init

  @nn.compact
  def __call__(self, x: Array) -> Array:
    kernel = self.param(
      'kernel',
      self.kernel_init,
      (*self.kernel_size, x.shape[-1], self.features),
      self.param_dtype,
    )
    x = jnp.asarray(x, self.dtype)
    kernel = jnp.asarray(kernel, self.dtype)
    if tuple(self.kernel_size) == (1, 1) and tuple(self.strides) == (1, 1):
      return lax.dot_general(x, kernel[0, 0], (((x.ndim - 1,), (0,)), ((), ())))
    strides = tuple(self.strides)
    padding = tuple(tuple(p) for p in self.padding)
    if kernel_set() == 'cpu':
      return conv_cpu(x, kernel, strides, padding)
    return conv(x, kernel, strides, padding)


def conv(
  x: Array,
  kernel: Array,
  strides: tuple[int, int],
  padding: tuple[tuple[int, int], ...],
) -> Array:
  """lax's 2-D convolution, NHWC x HWIO -> NHWC."""
  return lax.conv_general_dilated(
    x,
    kernel,
    window_strides=strides,
    padding=padding,
    dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
  )


# Batch x height x width positions per chunk of a kernel gradient on CPU.
KERNEL_GRAD_POSITIONS = 8192


def kernel_grad_chunks(batch: int, height: int, width: int) -> int:
  """How many equal batch chunks a conv's kernel gradient is computed in.

  XLA:CPU computes a kernel gradient as a convolution whose window is the
  whole image, and runs it much slower than the forward pass once the batch
  holds many positions (python -m benchmarks.conv3x3;
  docs/benchmarks.md#kernel-gradients-in-batch-chunks). Chunks of at most
  KERNEL_GRAD_POSITIONS run at about the forward pass's speed; this is the smallest divisor of the batch that gets there (the
  batch itself at most).
  """
  want = -(-batch * height * width // KERNEL_GRAD_POSITIONS)
  if want <= 1:
    return 1
  return next(d for d in range(min(want, batch), batch + 1) if batch % d == 0)


def batch_chunks(a: Array, chunks: int) -> list[Array]:
  size = a.shape[0] // chunks
  return [a[i * size : (i + 1) * size] for i in range(chunks)]


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv_cpu(
  x: Array,
  kernel: Array,
  strides: tuple[int, int],
  padding: tuple[tuple[int, int], ...],
) -> Array:
  """`conv`, whose kernel gradient is summed over `kernel_grad_chunks`.

  The input gradient is autodiff's. Equal to `conv`'s gradients up to float
  rounding (tests/test_layers.py); one of the CPU kernels, faster there.
  """
  return conv(x, kernel, strides, padding)


def _conv_cpu_fwd(x, kernel, strides, padding):
  return conv(x, kernel, strides, padding), (x, kernel)


def chunked_kernel_grad(
  x: Array,
  kernel: Array,
  dy: Array,
  strides: tuple[int, int],
  padding: tuple[tuple[int, int], ...],
  chunks: int,
) -> Array:
  """`conv`'s kernel gradient, autodiff's on each batch chunk, summed in f32."""
  return sum(
    jax.vjp(lambda k, x=x_part: conv(x, k, strides, padding), kernel)[1](
      dy_part
    )[0].astype(jnp.float32)
    for x_part, dy_part in zip(
      batch_chunks(x, chunks), batch_chunks(dy, chunks)
    )
  )


def _conv_cpu_bwd(strides, padding, residuals, dy):
  x, kernel = residuals
  _, x_vjp = jax.vjp(lambda x: conv(x, kernel, strides, padding), x)
  dkernel = chunked_kernel_grad(
    x, kernel, dy, strides, padding, kernel_grad_chunks(*dy.shape[:3])
  )
  return x_vjp(dy)[0], dkernel.astype(kernel.dtype)


conv_cpu.defvjp(_conv_cpu_fwd, _conv_cpu_bwd)


# --- BatchNorm + ReLU ------------------------------------------------------------


def moments(x: Array, axis_name: str | None = None) -> tuple[Array, Array]:
  """Per-channel batch mean and (biased) variance in float32, as nn.BatchNorm.

  Differentiated by autodiff (through the cross-device mean as well), so a
  caller may compute a feature map's moments once and hand them to every
  layer that normalises it.
  """
  axes = tuple(range(x.ndim - 1))
  x32 = x.astype(jnp.float32)
  mean = jnp.mean(x32, axes)
  mean_sq = jnp.mean(x32 * x32, axes)
  if axis_name is not None:
    mean, mean_sq = lax.pmean((mean, mean_sq), axis_name)
  return mean, jnp.maximum(0.0, mean_sq - mean * mean)


def _concat(pieces):
  return pieces[0] if len(pieces) == 1 else jnp.concatenate(pieces, axis=-1)


def _scale_shift(mean, var, scale, bias, epsilon):
  """BN as an affine map: y = x * mul + shift."""
  mul = lax.rsqrt(var + epsilon) * scale
  return mul, bias - mean * mul


def _normalize_relu(x, mean, var, scale, bias, epsilon, dtype):
  mul, shift = _scale_shift(mean, var, scale, bias, epsilon)
  return jnp.maximum(x.astype(jnp.float32) * mul + shift, 0.0).astype(dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6))
def normalize_relu(pieces, mean, var, scale, bias, epsilon, dtype):
  """relu((concat(pieces) - mean) * rsqrt(var + eps) * scale + bias).

  pieces: a tuple of [N, H, W, C_i] whose concatenation is normalised (a
  dense layer's input); mean, var: [sum C_i] statistics, computed by the
  caller. The concatenation is never stored: the forward pass reads the
  pieces directly, and the backward pass works piece by piece, one reduction
  and one elementwise pass each; autodiff stored the concatenation and the
  centred input and made more passes.
  Gradients for mean and var go back to whoever computed them (once per
  feature map, see `moments`).
  """
  return _normalize_relu(
    _concat(pieces), mean, var, scale, bias, epsilon, dtype
  )


def _normalize_relu_fwd(pieces, mean, var, scale, bias, epsilon, dtype):
  y = _normalize_relu(_concat(pieces), mean, var, scale, bias, epsilon, dtype)
  # y gives the ReLU mask of a single piece; the next conv keeps it anyway.
  return y, (pieces, y, mean, var, scale, bias)


def _normalize_relu_bwd(epsilon, dtype, residuals, dy):
  del dtype
  pieces, y, mean, var, scale, bias = residuals
  axes = tuple(range(dy.ndim - 1))
  inv = lax.rsqrt(var + epsilon)
  mul, shift = _scale_shift(mean, var, scale, bias, epsilon)
  # Piece by piece, so that no concatenation is formed (XLA would store it).
  ends = list(itertools.accumulate(p.shape[-1] for p in pieces))
  dpieces, dbias, sum_g_centered = [], [], []
  for piece, start, end in zip(pieces, [0] + ends[:-1], ends):
    part = slice(start, end)
    x = piece.astype(jnp.float32)
    # The ReLU mask: for one piece, from the output (XLA fuses its
    # recomputation); for several, recomputed as the forward pass computed
    # it, piece by piece (from y, XLA would store the concatenation to
    # recompute y from).
    if len(pieces) == 1:
      positive = y > 0
    else:
      positive = x * mul[part] + shift[part] > 0
    centered = x - mean[part]
    g = jnp.where(positive, dy[..., part].astype(jnp.float32), 0.0)
    dbias.append(jnp.sum(g, axes))
    sum_g_centered.append(jnp.sum(g * centered, axes))
    dpieces.append((g * mul[part]).astype(piece.dtype))
  dbias = _concat(dbias)
  sum_g_centered = _concat(sum_g_centered)
  dscale = sum_g_centered * inv
  dmean = -mul * dbias
  dvar = -0.5 * scale * inv * inv * inv * sum_g_centered
  return (
    tuple(dpieces),
    dmean,
    dvar,
    dscale.astype(scale.dtype),
    dbias.astype(bias.dtype),
  )


normalize_relu.defvjp(_normalize_relu_fwd, _normalize_relu_bwd)


class BatchNormReLU(nn.Module):
  """nn.BatchNorm (over the last axis) followed by ReLU, in one layer.

  Parameters 'scale', 'bias' and statistics 'mean', 'var' are nn.BatchNorm's,
  with the same momentum convention (ra = momentum * ra + (1 - momentum) *
  batch) and the same batch statistics in train mode (biased variance,
  averaged over `axis_name`).

  Call it on an array, or on the list of arrays whose concatenation is to be
  normalised (never materialised) together with their `moments`, so that
  feature maps shared by many layers have their statistics computed once.
  """

  momentum: float = 0.9
  epsilon: float = 1e-5
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  axis_name: str | None = None

  @nn.compact
  def __call__(
    self,
    x: Array | Sequence[Array],
    use_running_average: bool,
    piece_moments: Sequence[tuple[Array, Array]] | None = None,
  ) -> Array:
    pieces = tuple(x) if isinstance(x, (list, tuple)) else (x,)
    shape = (sum(p.shape[-1] for p in pieces),)
    ra_mean = self.variable(
      'batch_stats', 'mean', lambda s: jnp.zeros(s, jnp.float32), shape
    )
    ra_var = self.variable(
      'batch_stats', 'var', lambda s: jnp.ones(s, jnp.float32), shape
    )
    scale = self.param('scale', nn.initializers.ones, shape, self.param_dtype)
    bias = self.param('bias', nn.initializers.zeros, shape, self.param_dtype)
    dtype = self.dtype or pieces[0].dtype
    if use_running_average:
      return _normalize_relu(
        _concat(pieces),
        ra_mean.value,
        ra_var.value,
        scale,
        bias,
        self.epsilon,
        dtype,
      )
    if piece_moments is None:
      piece_moments = [moments(p, self.axis_name) for p in pieces]
    mean = _concat([m for m, _ in piece_moments])
    var = _concat([v for _, v in piece_moments])
    y = normalize_relu(pieces, mean, var, scale, bias, self.epsilon, dtype)
    if not self.is_initializing():
      self.update_running_average(mean, var)
    return y

  def update_running_average(self, mean: Array, var: Array) -> None:
    """ra = momentum * ra + (1 - momentum) * batch, for this layer's statistics.

    Public so that a caller that normalises without this module's __call__
    (shared_buffer.dense_block) keeps its statistics as __call__ would.
    """
    mean, var = lax.stop_gradient((mean, var))
    for name, batch in (('mean', mean), ('var', var)):
      running = self.get_variable('batch_stats', name)
      self.put_variable(
        'batch_stats',
        name,
        self.momentum * running + (1 - self.momentum) * batch,
      )


# --- pooling -------------------------------------------------------------------


def _pool_views(x: Array, window: int, out_h: int, out_w: int) -> list[Array]:
  """The window*window strided views whose elementwise max is a stride-2 pool."""
  return [
    x[:, i : i + 2 * out_h - 1 : 2, j : j + 2 * out_w - 1 : 2]
    for i in range(window)
    for j in range(window)
  ]


def _max_pool(x: Array, window: int, out_h: int, out_w: int) -> Array:
  return functools.reduce(jnp.maximum, _pool_views(x, window, out_h, out_w))


def _max_pool_with_argmax(x, window, out_h, out_w):
  """(max pool, flat index into x of each window's first maximum)."""
  views = _pool_views(x, window, out_h, out_w)
  y = functools.reduce(jnp.maximum, views)
  offset = jnp.full(y.shape, window * window, jnp.int32)
  for k in reversed(range(window * window)):  # the first maximum wins
    offset = jnp.where(views[k] == y, k, offset)
  _, height, width, c = x.shape
  rows = 2 * lax.broadcasted_iota(jnp.int32, y.shape, 1) + offset // window
  cols = 2 * lax.broadcasted_iota(jnp.int32, y.shape, 2) + offset % window
  batch = lax.broadcasted_iota(jnp.int32, y.shape, 0)
  channel = lax.broadcasted_iota(jnp.int32, y.shape, 3)
  index = ((batch * height + rows) * width + cols) * c + channel
  return y, index


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3, 4))
def _max_pool_s2(x, window, out_h, out_w, shape):
  del shape  # x.shape, for the backward pass
  return _max_pool(x, window, out_h, out_w)


def _max_pool_s2_fwd(x, window, out_h, out_w, shape):
  del shape
  return _max_pool_with_argmax(x, window, out_h, out_w)


def _max_pool_s2_bwd(window, out_h, out_w, shape, index, g):
  # A scatter-add of g to each window's first maximum, as reduce_window's
  # select-and-scatter does. Written as autodiff would (slices, pads, masks),
  # XLA:CPU fused the whole gradient chain producing g into each of the
  # window*window masked copies and recomputed it as often.
  del window, out_h, out_w
  dx = (
    jnp.zeros(math.prod(shape), g.dtype)
    .at[index.reshape(-1)]
    .add(g.reshape(-1), indices_are_sorted=False, unique_indices=False)
  )
  return (dx.reshape(shape),)


_max_pool_s2.defvjp(_max_pool_s2_fwd, _max_pool_s2_bwd)


def max_pool_3x3_s2(x: Array) -> Array:
  """3x3/2 max pool with padding 1 (torchvision's, Keras's) on [N, H, W, C].

  Computed as the max of nine strided views, with the gradient written out:
  XLA:CPU lowers reduce_window's gradient through index arrays that cost
  more than the rest of the stem.
  """
  height, width = x.shape[1:3]
  out_h, out_w = (height - 1) // 2 + 1, (width - 1) // 2 + 1
  x = jnp.pad(
    x,
    ((0, 0), (1, 2 * out_h - height), (1, 2 * out_w - width), (0, 0)),
    constant_values=-jnp.inf,
  )
  return _max_pool_s2(x, 3, out_h, out_w, x.shape)


def max_pool_2x2(x: Array) -> Array:
  """2x2/2 max pool, VALID (odd edges dropped), on [N, H, W, C]."""
  return _max_pool_s2(x, 2, x.shape[1] // 2, x.shape[2] // 2, x.shape)


def avg_pool_2x2(x: Array) -> Array:
  """2x2/2 average pool, VALID (odd edges dropped), on [N, H, W, C]."""
  return nn.avg_pool(x, (2, 2), strides=(2, 2), padding='VALID')


# --- dropout ---------------------------------------------------------------------

_THREEFRY_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))


def _rotate_left(x: Array, bits: int) -> Array:
  return lax.shift_left(x, np.uint32(bits)) | lax.shift_right_logical(
    x, np.uint32(32 - bits)
  )


def _threefry2x32(key1: Array, key2: Array, x1: Array, x2: Array):
  """The Threefry-2x32 hash (20 rounds), JAX's, written out round by round."""
  keys = (key1, key2, key1 ^ key2 ^ np.uint32(0x1BD11BDA))
  x1, x2 = x1 + keys[0], x2 + keys[1]
  for i in range(5):
    for bits in _THREEFRY_ROTATIONS[i % 2]:
      x1 = x1 + x2
      x2 = x1 ^ _rotate_left(x2, bits)
    x1 = x1 + keys[(i + 1) % 3]
    x2 = x2 + keys[(i + 2) % 3] + np.uint32(i + 1)
  return x1, x2


@functools.partial(jax.jit, static_argnums=(1, 2))
def _threefry_bernoulli(key: Array, p: float, shape: tuple[int, ...]) -> Array:
  """jax.random.bernoulli's float32 'low' mode on partitionable threefry bits:
  counters are the flat index (its high half zero below 2**32 elements),
  the bits the xor of the hash's two words, their top 23 a float in [0, 1).
  Jitted, as jax.random's draws are: traced and lowered once per shape."""
  key1, key2 = jax.random.key_data(key)
  count = lax.iota(np.uint32, math.prod(shape)).reshape(shape)
  bits = functools.reduce(
    lax.bitwise_xor, _threefry2x32(key1, key2, jnp.zeros_like(count), count)
  )
  one = np.array(1.0, np.float32).view(np.uint32)
  uniform = lax.bitcast_convert_type(
    lax.shift_right_logical(bits, np.uint32(9)) | one, jnp.float32
  ) - np.float32(1.0)
  return uniform < np.float32(p)


@functools.cache
def _threefry_bernoulli_is_jax() -> bool:
  """Whether `_threefry_bernoulli` draws jax.random.bernoulli's bits with this
  jax: checked once per process, on a small odd shape (under a second),
  wherever it is first needed: inside a trace, or under a transfer guard
  (train.py's loop disallows implicit transfers; this one is deliberate)."""

  def both(key):
    return (
      _threefry_bernoulli(key, 0.8, (3, 5, 7)),
      jax.random.bernoulli(key, 0.8, (3, 5, 7)),
    )

  with jax.ensure_compile_time_eval(), jax.transfer_guard('allow'):
    ours, theirs = jax.jit(both)(jax.random.key(20161608, impl='threefry2x32'))
    return bool(np.array_equal(ours, theirs))


def bernoulli(key: Array, p: float, shape: Sequence[int]) -> Array:
  """`jax.random.bernoulli(key, p, shape)`, bit for bit: dropout's keep mask.

  On CPU, JAX lowers the threefry hash behind a random draw as a rolled loop,
  and XLA:CPU runs it as a loop over the whole array that stores the random
  bits. Written out round by round, the hash fuses with the mask's use, so
  the train step takes less time, temp memory and compile time
  (docs/benchmarks.md#dropouts-masks-hashed-in-straight-line-code). Same
  bits, so runs keep their random streams. Outside the CPU kernels (`kernel_set`), and for rbg
  keys, 64-bit floats, jax_threefry_partitionable off or a jax whose bits
  differ, this is jax.random.bernoulli.
  """
  shape = tuple(shape)
  if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
    key = jax.random.wrap_key_data(key)
  if (
    kernel_set() == 'cpu'
    and str(jax.random.key_impl(key)) == 'threefry2x32'
    and getattr(jax.config, 'jax_threefry_partitionable', True)
    and not jax.config.jax_enable_x64
    and math.prod(shape) < 2**32
    and key.shape == ()
    and _threefry_bernoulli_is_jax()
  ):
    return _threefry_bernoulli(key, p, shape)
  return jax.random.bernoulli(key, p, shape)


class Dropout(nn.Module):
  """nn.Dropout, with its keep mask drawn by `bernoulli`: the same masks
  (same rng collection, same key for the same module path), fused on CPU.

  Named like nn.Dropout, so that auto-named instances ('Dropout_0') and
  hence their keys are the same as before.
  """

  rate: float
  rng_collection: str = 'dropout'

  @nn.compact
  def __call__(self, x: Array, deterministic: bool) -> Array:
    if self.rate == 0.0 or deterministic:
      return x
    if self.rate == 1.0:
      return jnp.zeros_like(x)
    keep_prob = 1.0 - self.rate
    keep = bernoulli(self.make_rng(self.rng_collection), keep_prob, x.shape)
    return lax.select(keep, x / keep_prob, jnp.zeros_like(x))
