"""3x3 conv gradients inside a loop body: autodiff's against written-out forms.

  python -m benchmarks.conv_grad_in_loop [--layers 24] [--runs 7]

The memory-efficient block (densenet_flax/shared_buffer.py) differentiates
its 3x3 convs inside `fori_loop` bodies, where XLA:CPU runs autodiff's conv
gradients far slower than in straight-line code. Each way of computing the
input gradient (dx) and the kernel gradient (dk) runs once per layer for
--layers layers of DenseNet-121's third block (batch 8 at 14x14, 128 -> 32
channels), unrolled and in a `fori_loop`; median ms of --runs runs, and the
largest difference from autodiff relative to its largest value. Imports no
TensorFlow.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
from jax import lax

from densenet_flax import shared_buffer

SHAPE = (8, 14, 128, 32)  # batch, height = width, input channels, output


def conv(x, kernel):
  return shared_buffer._conv3x3_forward(x, kernel)


def dx_autodiff(x, kernel, dy):
  return jax.vjp(lambda a: conv(a, kernel), x)[1](dy)[0]


def dx_ours(x, kernel, dy):
  """A forward conv of dy with the flipped, transposed kernel."""
  return shared_buffer._conv3x3_bwd((x, kernel), dy)[0]


def dk_autodiff(x, kernel, dy):
  return jax.vjp(lambda k: conv(x, k), kernel)[1](dy)[0]


def dk_nine_matmuls(x, kernel, dy):
  """The kernel gradient the block used before: one matmul per tap."""
  height, width = x.shape[1:3]
  padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  taps = [
    jnp.einsum('nhwi,nhwo->io', padded[:, a : a + height, b : b + width], dy)
    for a in range(3)
    for b in range(3)
  ]
  return jnp.stack(taps).reshape(kernel.shape)


def dk_ours(x, kernel, dy):
  """A forward conv over the batch axis: x's channels as its batch."""
  return shared_buffer._conv3x3_bwd((x, kernel), dy)[1]


WAYS = {
  'dx autodiff': (dx_autodiff, 'x'),
  'dx forward conv, flipped kernel (ours)': (dx_ours, 'x'),
  'dk autodiff': (dk_autodiff, 'kernel'),
  'dk nine matmuls (before)': (dk_nine_matmuls, 'kernel'),
  'dk forward conv (ours)': (dk_ours, 'kernel'),
}


def programs(fn, num_layers, like):
  """fn over every layer, unrolled and in a fori_loop."""

  def unrolled(xs, kernels, dys):
    return jnp.stack([fn(xs[i], kernels[i], dys[i]) for i in range(num_layers)])

  def looped(xs, kernels, dys):
    def body(i, out):
      return out.at[i].set(fn(xs[i], kernels[i], dys[i]))

    return lax.fori_loop(
      0, num_layers, body, jnp.zeros((num_layers, *like.shape[1:]), like.dtype)
    )

  return jax.jit(unrolled), jax.jit(looped)


def median_ms(fn, args, runs):
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(runs):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return statistics.median(times) * 1e3


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--layers', type=int, default=24)
  parser.add_argument('--runs', type=int, default=7)
  args = parser.parse_args()
  n, size, c_in, c_out = SHAPE
  keys = jax.random.split(jax.random.key(0), 3)
  xs = jax.random.normal(keys[0], (args.layers, n, size, size, c_in))
  kernels = jax.random.normal(keys[1], (args.layers, 3, 3, c_in, c_out))
  dys = jax.random.normal(keys[2], (args.layers, n, size, size, c_out))
  operands = (xs, kernels, dys)
  print(
    f'3x3 conv gradients, {args.layers} layers of {SHAPE} (N, H, C_in, '
    f'C_out), median ms on {jax.devices()[0].device_kind}'
  )
  print(f'{"":40} {"unrolled":>9} {"in loop":>9} {"max rel diff":>13}')
  references = {}
  for name, (fn, wrt) in WAYS.items():
    like = xs if wrt == 'x' else kernels
    unrolled, looped = programs(fn, args.layers, like)
    result = looped(*operands)
    reference = references.setdefault(wrt, result)
    diff = float(
      jnp.max(jnp.abs(result - reference)) / jnp.max(jnp.abs(reference))
    )
    print(
      f'{name:40} {median_ms(unrolled, operands, args.runs):>9.1f} '
      f'{median_ms(looped, operands, args.runs):>9.1f} {diff:>13.0e}',
      flush=True,
    )


if __name__ == '__main__':
  main()
