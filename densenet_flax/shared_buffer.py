"""A dense block's train-mode pass over one shared buffer, with its own VJP.

This is `memory_efficient=True` (models.DenseBlock). All feature maps of a
block live in one [N, H, W, C0 + L*k] buffer, as the efficient PyTorch
DenseNets' shared storage, and the backward pass is written by hand: it keeps
only the final buffer, its BN moments and the dropout masks, walks the
layers backwards in `fori_loop`s, recomputes each layer from the final buffer
and accumulates the buffer's gradient in one running array. What autodiff
keeps, a layer's intermediate maps and the partial sums of every map's
gradient, grows faster than depth, and on XLA:CPU `jax.checkpoint` did not
help: the compiler merged the recomputation back into the forward pass
(docs/benchmarks.md).

The layers run in loops of `BlockSpec.segment_size`. Every layer of a loop
reads the buffer up to the input width of the loop's last layer: channels a
layer has not seen yet (zeros in the forward pass, later maps in the backward
pass) meet zero BN scale and bias and zero kernel rows, so they contribute
nothing and get no gradient. That padding costs the first BN and the 1x1 conv
some work (basic layers without a bottleneck: the 3x3 conv too); in exchange
each loop body compiles once, not once per layer. The block has no forward-
mode derivative (jvp) in train mode, as any custom_vjp.

Results equal the list path's (models.DenseLayer) to float rounding,
forward, gradients and BN statistics (tests/test_models.py); dropout masks
are drawn here from the layer's index and differ from the list path's.
Imports no TensorFlow.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from densenet_flax import layers

Array = Any


@dataclasses.dataclass(frozen=True)
class BlockSpec:
  """The static shape of a dense block (hashable: a jit/custom_vjp constant)."""

  num_layers: int
  growth_rate: int
  bottleneck: bool  # BN-ReLU-Conv1x1-BN-ReLU-Conv3x3, else BN-ReLU-Conv3x3
  drop_rate: float
  epsilon: float
  dtype: Any
  axis_name: str | None = None
  segment_size: int = 8  # layers per loop; each loop reads a fixed width

  def __post_init__(self):
    if self.num_layers < 1 or self.segment_size < 1:
      raise ValueError(
        f'BlockSpec needs num_layers >= 1 and segment_size >= '
        f'1; got {self.num_layers} and {self.segment_size}'
      )

  def segments(self, in_features: int) -> list[tuple[int, int, int]]:
    """(first layer, end layer, channels read) of each loop over layers.

    A loop's layers read the buffer up to the last one's input width, so
    shorter loops waste less of the first BN and 1x1 conv on channels that
    are not there yet, and every loop body is one more to compile.
    """
    loops = []
    for first in range(0, self.num_layers, self.segment_size):
      end = min(first + self.segment_size, self.num_layers)
      loops.append((first, end, in_features + (end - 1) * self.growth_rate))
    return loops


class LayerParams(NamedTuple):
  """One loop's layer params stacked on a leading [L] axis, padded to its width.

  With C the channels the loop reads: scale1, bias1: [L, C] (zero beyond a
  layer's inputs); kernel1: [L, C, 4k] (bottleneck 1x1) or [L, 3, 3, C, k]
  (basic); scale2, bias2: [L, 4k] and kernel2: [L, 3, 3, 4k, k] for
  bottleneck layers, None otherwise.
  """

  scale1: Array
  bias1: Array
  kernel1: Array
  scale2: Array | None = None
  bias2: Array | None = None
  kernel2: Array | None = None


class BlockOutputs(NamedTuple):
  buffer: Array  # [N, H, W, C]: x_0, x_1, ..., x_L
  mean: Array  # [C] batch statistics of the buffer (float32)
  var: Array
  mean2: Array  # [L, 4k] batch statistics of each bottleneck ([L, 0] basic)
  var2: Array


def stack_params(
  spec: BlockSpec, per_layer: list[dict[str, Any]], in_features: int
) -> tuple[LayerParams, ...]:
  """One LayerParams per `spec.segments`, from each layer's Flax params.

  per_layer: {'norm1': {'scale', 'bias'}, 'conv1': {'kernel'}, ...} of each
  layer. Padding is done here, outside the custom VJP, so autodiff slices the
  gradients back to each layer's shapes.
  """

  def pad_channels(a, axis, width):
    widths = [(0, 0)] * a.ndim
    widths[axis] = (0, width - a.shape[axis])
    return jnp.pad(a, widths)

  def stack(group, width):
    scale1 = jnp.stack(
      [pad_channels(p['norm1']['scale'], 0, width) for p in group]
    )
    bias1 = jnp.stack(
      [pad_channels(p['norm1']['bias'], 0, width) for p in group]
    )
    kernels = [p['conv1']['kernel'] for p in group]
    if not spec.bottleneck:
      return LayerParams(
        scale1, bias1, jnp.stack([pad_channels(k, 2, width) for k in kernels])
      )
    return LayerParams(
      scale1,
      bias1,
      jnp.stack([pad_channels(k[0, 0], 0, width) for k in kernels]),
      jnp.stack([p['norm2']['scale'] for p in group]),
      jnp.stack([p['norm2']['bias'] for p in group]),
      jnp.stack([p['conv2']['kernel'] for p in group]),
    )

  return tuple(
    stack(per_layer[first:end], width)
    for first, end, width in spec.segments(in_features)
  )


def _keep_mask(
  spec: BlockSpec, key: Array | None, index: Array, shape: tuple[int, ...]
) -> Array | None:
  """The keep mask of the block's `index`-th dropout (None: no dropout)."""
  if spec.drop_rate == 0:
    return None
  with jax.named_scope('dropout'):
    return layers.bernoulli(
      jax.random.fold_in(key, index), 1.0 - spec.drop_rate, shape
    )


def _dropout(spec: BlockSpec, x: Array, keep: Array | None) -> Array:
  if keep is None:
    return x
  keep_prob = 1.0 - spec.drop_rate
  with jax.named_scope('dropout'):
    return jnp.where(keep, x / keep_prob, jnp.zeros_like(x)).astype(x.dtype)


def _conv3x3_forward(x: Array, kernel: Array) -> Array:
  return lax.conv_general_dilated(
    x,
    kernel,
    window_strides=(1, 1),
    padding=((1, 1), (1, 1)),
    dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
  )


@jax.custom_vjp
def _conv3x3(x: Array, kernel: Array) -> Array:
  """A 3x3 stride-1 'same' conv, NHWC x HWIO, with its gradient written out.

  Inside a loop body XLA:CPU runs autodiff's conv gradients many times
  slower than in straight-line code. Both gradients are written here as
  forward convs in the layout of the forward pass (the input's: dy with the
  flipped kernel; the kernel's: over the batch axis, x's channels as its
  batch), which run as fast inside a loop as outside
  (python -m benchmarks.conv_grad_in_loop;
  docs/benchmarks.md#inside-the-memory-efficient-block). One of the CPU
  kernels (layers.kernel_set); the generic kernels keep autodiff's
  gradient.
  """
  return _conv3x3_forward(x, kernel)


def _conv3x3_fwd(x, kernel):
  return _conv3x3_forward(x, kernel), (x, kernel)


def _conv3x3_bwd(residuals, dy):
  x, kernel = residuals
  dx = _conv3x3_forward(dy, jnp.flip(kernel, (0, 1)).swapaxes(2, 3))
  # The kernel's gradient as a forward conv too: the batch axis becomes the
  # contracted feature axis, x's channels the batch, dy the 'kernel'; summed
  # over batch chunks, which XLA:CPU runs faster (layers.kernel_grad_chunks).
  chunks = layers.kernel_grad_chunks(*dy.shape[:3])
  dkernel = sum(
    lax.conv_general_dilated(
      jnp.transpose(x_part, (3, 1, 2, 0)),
      jnp.transpose(dy_part, (1, 2, 0, 3)),
      window_strides=(1, 1),
      padding=((1, 1), (1, 1)),
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
      preferred_element_type=jnp.float32,
    )
    for x_part, dy_part in zip(
      layers.batch_chunks(x, chunks), layers.batch_chunks(dy, chunks)
    )
  )
  dkernel = jnp.transpose(dkernel, (1, 2, 0, 3)).astype(kernel.dtype)
  return dx.astype(x.dtype), dkernel


_conv3x3.defvjp(_conv3x3_fwd, _conv3x3_bwd)


class Masks(NamedTuple):
  """A layer's dropout keep masks (None without dropout), [N, H, W, C] each.

  keep1 follows the first conv (the bottleneck's 1x1, or a basic layer's
  3x3), keep2 the bottleneck's 3x3 (None for basic layers). The forward pass
  keeps them, stacked on a leading [L] axis per loop, so the backward pass
  draws no random bits (drawing them again slows the step;
  docs/benchmarks.md#tried-and-dropped-1); as bools they add
  1 byte per element, linear in depth.
  """

  keep1: Array | None
  keep2: Array | None


def _draw_masks(
  spec: BlockSpec,
  key: Array | None,
  index: Array,
  p: LayerParams,
  batch_shape: tuple[int, ...],
) -> Masks:
  """Layer `index`'s masks: the key folded with 2 * index, 2 * index + 1."""
  keep1 = _keep_mask(spec, key, 2 * index, (*batch_shape, p.kernel1.shape[-1]))
  keep2 = (
    _keep_mask(spec, key, 2 * index + 1, (*batch_shape, spec.growth_rate))
    if spec.bottleneck
    else None
  )
  return Masks(keep1, keep2)


def _layer(
  spec: BlockSpec,
  p: LayerParams,
  buffer: Array,
  mean: Array,
  var: Array,
  masks: Masks,
):
  """One dense layer on the buffer's first channels and their statistics.

  Returns (new map [N, H, W, k], mean2, var2): the bottleneck's statistics.
  """
  # The scopes name the parts as models.DenseLayer's modules are named, in
  # the compiled program's metadata (benchmarks/step_profile.py reads it).
  dtype = spec.dtype
  with jax.named_scope('norm1'):
    x = layers.normalize_relu(
      (buffer,), mean, var, p.scale1, p.bias1, spec.epsilon, dtype
    )
  conv3x3 = _conv3x3 if layers.kernel_set() == 'cpu' else _conv3x3_forward
  if not spec.bottleneck:
    with jax.named_scope('conv1'):
      x = conv3x3(x, p.kernel1.astype(dtype))
    empty = jnp.zeros((0,), jnp.float32)
    return _dropout(spec, x, masks.keep1), empty, empty
  with jax.named_scope('conv1'):
    x = lax.dot_general(
      x, p.kernel1.astype(dtype), (((x.ndim - 1,), (0,)), ((), ()))
    )
  x = _dropout(spec, x, masks.keep1)
  with jax.named_scope('norm2'):
    mean2, var2 = layers.moments(x, spec.axis_name)
    x = layers.normalize_relu(
      (x,), mean2, var2, p.scale2, p.bias2, spec.epsilon, dtype
    )
  with jax.named_scope('conv2'):
    x = conv3x3(x, p.kernel2.astype(dtype))
  return _dropout(spec, x, masks.keep2), mean2, var2


def _at(stacks: Any, index: Array) -> Any:
  """Entry `index` of every array of a tree stacked on a leading [L] axis
  (LayerParams, Masks)."""
  return jax.tree_util.tree_map(lambda a: a[index], stacks)


def _set_at(stacks: Any, index: Array, values: Any) -> Any:
  """`stacks` with entry `index` of each array set to the tree `values`."""
  return jax.tree_util.tree_map(lambda a, v: a.at[index].set(v), stacks, values)


def _forward(
  spec: BlockSpec,
  params: tuple[LayerParams, ...],
  x0: Array,
  key: Array | None,
  keep_masks: bool = False,
):
  """The block's outputs; with `keep_masks`, also each loop's stacked Masks."""
  c0, k, num_layers = x0.shape[-1], spec.growth_rate, spec.num_layers
  batch_shape = x0.shape[:-1]
  buffer = jnp.concatenate(
    [x0, jnp.zeros((*batch_shape, num_layers * k), x0.dtype)], axis=-1
  )
  mean0, var0 = layers.moments(x0, spec.axis_name)
  mean = jnp.concatenate([mean0, jnp.zeros((num_layers * k,), jnp.float32)])
  var = jnp.concatenate([var0, jnp.ones((num_layers * k,), jnp.float32)])
  width2 = params[0].scale2.shape[-1] if spec.bottleneck else 0
  mean2 = jnp.zeros((num_layers, width2), jnp.float32)
  var2 = jnp.zeros((num_layers, width2), jnp.float32)
  carry = (buffer, mean, var, mean2, var2)

  loop_masks = []
  for (first, end, width), segment in zip(spec.segments(c0), params):

    def body(index, carry, first=first, width=width, segment=segment):
      (buffer, mean, var, mean2, var2), kept = carry
      p = _at(segment, index - first)
      masks = _draw_masks(spec, key, index, p, batch_shape)
      new, m2, v2 = _layer(
        spec, p, buffer[..., :width], mean[:width], var[:width], masks
      )
      new_mean, new_var = layers.moments(new, spec.axis_name)
      start = c0 + index * k
      if keep_masks:
        kept = _set_at(kept, index - first, masks)
      return (
        (
          lax.dynamic_update_slice_in_dim(buffer, new, start, axis=3),
          lax.dynamic_update_slice_in_dim(mean, new_mean, start, axis=0),
          lax.dynamic_update_slice_in_dim(var, new_var, start, axis=0),
          mean2.at[index].set(m2),
          var2.at[index].set(v2),
        ),
        kept,
      )

    kept = None
    if keep_masks:
      shapes = jax.eval_shape(
        lambda p: _draw_masks(spec, key, first, p, batch_shape), _at(segment, 0)
      )
      kept = jax.tree_util.tree_map(
        lambda m: jnp.zeros((end - first, *m.shape), m.dtype), shapes
      )
    carry, kept = lax.fori_loop(first, end, body, (carry, kept))
    loop_masks.append(kept)
  outputs = BlockOutputs(*carry)
  return (outputs, tuple(loop_masks)) if keep_masks else outputs


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def dense_block(
  spec: BlockSpec, params: tuple[LayerParams, ...], x0: Array, key: Array | None
) -> BlockOutputs:
  """The block's feature maps in one buffer and the batch statistics of each.

  params: `stack_params` of the block's layers; x0: [N, H, W, C0], the
  block's input, in the compute dtype; key: the dropout key (None when
  spec.drop_rate is 0). Gradients flow to params, x0 and through every
  output (the statistics too, as for `layers.moments`).
  """
  return _forward(spec, params, x0, key)


def _dense_block_fwd(spec, params, x0, key):
  outputs, loop_masks = _forward(spec, params, x0, key, keep_masks=True)
  return outputs, (
    params,
    outputs.buffer,
    outputs.mean,
    outputs.var,
    loop_masks,
  )


def _dense_block_bwd(spec, residuals, cotangents):
  params, buffer, mean, var, loop_masks = residuals
  d_buffer, d_mean, d_var, d_mean2, d_var2 = cotangents
  k, num_layers = spec.growth_rate, spec.num_layers
  c0 = buffer.shape[-1] - num_layers * k

  def moments_vjp(x, d_m, d_v):  # in float32, as layers.moments computes
    _, vjp = jax.vjp(
      lambda x: layers.moments(x, spec.axis_name), x.astype(jnp.float32)
    )
    return vjp((d_m, d_v))[0]

  def add_front(total, part):  # total[..., :width] += part, in place
    width = part.shape[-1]
    return lax.dynamic_update_slice_in_dim(
      total,
      total[..., :width] + part.astype(total.dtype),
      0,
      axis=total.ndim - 1,
    )

  # The buffer's gradient sums a term from every later layer: it is kept in
  # float32 whatever the compute dtype, and cast once at the end.
  d_params = []
  carry = (d_buffer.astype(jnp.float32), d_mean, d_var)
  for (first, end, width), segment, kept in reversed(
    list(zip(spec.segments(c0), params, loop_masks))
  ):

    def body(
      step, carry, first=first, end=end, width=width, segment=segment, kept=kept
    ):
      index = end - 1 - step
      d_buffer, d_mean, d_var, d_segment = carry
      # The final buffer, tied to this step. Left loop-invariant, XLA hoisted
      # work on it (the first BN's centred input) out of every loop, and
      # scheduled all the loops' copies at once, a memory term of loops x
      # width (docs/benchmarks.md).
      maps, _ = lax.optimization_barrier((buffer, step))
      start = c0 + index * k
      # x_index's gradient is complete: every layer reading it (or its
      # statistics) came later and has been walked.
      own = lambda a, axis: lax.dynamic_slice_in_dim(a, start, k, axis)  # noqa: E731
      d_new = own(d_buffer, 3) + moments_vjp(
        own(maps, 3), own(d_mean, 0), own(d_var, 0)
      )
      _, layer_vjp = jax.vjp(
        lambda p, b, m, v: _layer(spec, p, b, m, v, _at(kept, index - first)),
        _at(segment, index - first),
        maps[..., :width],
        mean[:width],
        var[:width],
      )
      d_p, d_b, d_m, d_v = layer_vjp(
        (d_new.astype(buffer.dtype), d_mean2[index], d_var2[index])
      )
      d_segment = _set_at(d_segment, index - first, d_p)
      return (
        add_front(d_buffer, d_b),
        add_front(d_mean, d_m),
        add_front(d_var, d_v),
        d_segment,
      )

    *carry, d_segment = lax.fori_loop(
      0,
      end - first,
      body,
      (*carry, jax.tree_util.tree_map(jnp.zeros_like, segment)),
    )
    d_params.insert(0, d_segment)
  d_buffer, d_mean, d_var = carry
  d_x0 = d_buffer[..., :c0] + moments_vjp(
    buffer[..., :c0], d_mean[:c0], d_var[:c0]
  )
  return tuple(d_params), d_x0.astype(buffer.dtype), None


dense_block.defvjp(_dense_block_fwd, _dense_block_bwd)
