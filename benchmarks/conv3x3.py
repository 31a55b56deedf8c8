"""A DenseNet 3x3 convolution three ways: XLA's, im2col, 9 accumulated matmuls.

  python -m benchmarks.conv3x3 [--kernel_grad_only]

Forward plus the gradients for input and kernel (jit of value_and_grad of a
sum of squares), median of 10 runs, on shapes of DenseNet-121 @224 (batch 8)
and of the FER and CIFAR models (48 and 32 px). One avenue tried for
XLA:CPU's 3x3 convolutions; `max rel diff` is each way's largest gradient
difference from XLA's convolution.

A second table times the kernel gradient alone (jit of jax.vjp with respect
to the kernel) in 1, 2, 4, ... batch chunks, summed, on the same shapes and
on the three stems, and marks the chunk count `layers.kernel_grad_chunks`
picks: the evidence for `layers.conv_cpu`. Imports no TensorFlow.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time

import jax
import jax.numpy as jnp
from jax import lax

from densenet_flax import layers

# (batch, height = width, input channels, output channels)
SHAPES = (
  (8, 56, 128, 32),
  (8, 28, 128, 32),
  (64, 24, 48, 12),
  (64, 12, 48, 12),
  (32, 32, 48, 12),
)


def xla_conv(x, w):
  return lax.conv_general_dilated(
    x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=('NHWC', 'HWIO', 'NHWC')
  )


def _shifted(x):
  _, h, w, _ = x.shape
  padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  return [
    padded[:, i : i + h, j : j + w, :] for i in range(3) for j in range(3)
  ]


def im2col(x, w):
  columns = jnp.concatenate(_shifted(x), -1)
  return jnp.einsum('nhwc,cd->nhwd', columns, w.reshape(-1, w.shape[-1]))


def nine_matmuls(x, w):
  taps = w.reshape(9, *w.shape[2:])
  return sum(
    jnp.einsum('nhwc,cd->nhwd', view, tap)
    for view, tap in zip(_shifted(x), taps)
  )


def median_ms(fn, x, w, runs=10):
  grad = jax.jit(
    jax.value_and_grad(lambda a, b: jnp.sum(fn(a, b) ** 2), argnums=(0, 1))
  )
  result = jax.block_until_ready(grad(x, w))
  times = []
  for _ in range(runs):
    start = time.perf_counter()
    jax.block_until_ready(grad(x, w))
    times.append(time.perf_counter() - start)
  return statistics.median(times) * 1e3, result


# (input shape, kernel shape, stride, padding): the 3x3 convs above, then the
# stems of DenseNet-121 @224, fer_densenet @48 and DenseNet-BC @32.
KERNEL_GRAD_CASES = tuple(
  ((n, size, size, c_in), (3, 3, c_in, c_out), 1, 1)
  for n, size, c_in, c_out in SHAPES
) + (
  ((8, 224, 224, 3), (7, 7, 3, 64), 2, 3),
  ((64, 48, 48, 1), (3, 3, 1, 24), 1, 1),
  ((64, 32, 32, 3), (3, 3, 3, 24), 1, 1),
)


def kernel_grad_table(runs=7):
  print(
    '\nkernel gradient alone in batch chunks, median ms '
    '(* = layers.kernel_grad_chunks)'
  )
  for x_shape, w_shape, stride, pad in KERNEL_GRAD_CASES:
    x = jax.random.normal(jax.random.key(0), x_shape)
    w = jax.random.normal(jax.random.key(1), w_shape) * 0.05
    y = layers.conv(x, w, (stride, stride), ((pad, pad), (pad, pad)))
    dy = jax.random.normal(jax.random.key(2), y.shape)
    picked = layers.kernel_grad_chunks(*y.shape[:3])
    cells = []
    for chunks in (1, 2, 4, 8, 16, 32):
      if x_shape[0] % chunks:
        continue
      fn = jax.jit(
        functools.partial(
          layers.chunked_kernel_grad,
          strides=(stride, stride),
          padding=((pad, pad), (pad, pad)),
          chunks=chunks,
        )
      )
      jax.block_until_ready(fn(x, w, dy))
      times = []
      for _ in range(runs):
        start = time.perf_counter()
        jax.block_until_ready(fn(x, w, dy))
        times.append(time.perf_counter() - start)
      mark = '*' if chunks == picked else ''
      cells.append(f'{chunks}{mark}: {statistics.median(times) * 1e3:.1f}')
    print(
      f'{str(x_shape):>18} k{w_shape[0]}/{stride} -> {w_shape[-1]}: '
      + ', '.join(cells),
      flush=True,
    )


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--kernel_grad_only', action='store_true')
  args = parser.parse_args(argv)
  if not args.kernel_grad_only:
    three_ways()
  kernel_grad_table()


def three_ways():
  print(
    f'3x3 conv forward + both gradients, median ms, on '
    f'{jax.devices()[0].device_kind}'
  )
  print(
    f'{"shape (N, H, C_in, C_out)":>26} {"XLA conv":>9} {"im2col":>9} '
    f'{"9 matmuls":>10} {"max rel diff":>13}'
  )
  for n, size, c_in, c_out in SHAPES:
    x = jax.random.normal(jax.random.key(0), (n, size, size, c_in))
    w = jax.random.normal(jax.random.key(1), (3, 3, c_in, c_out)) * 0.05
    times, reference, worst = [], None, 0.0
    for fn in (xla_conv, im2col, nine_matmuls):
      ms, result = median_ms(fn, x, w)
      times.append(ms)
      grads = jax.tree_util.tree_leaves(result[1])
      if reference is None:
        reference = grads
      worst = max(
        [worst]
        + [
          float(jnp.max(jnp.abs(g - r)) / jnp.max(jnp.abs(r)))
          for g, r in zip(grads, reference)
        ]
      )
    print(
      f'{str((n, size, c_in, c_out)):>26} {times[0]:>9.1f} {times[1]:>9.1f}'
      f' {times[2]:>10.1f} {worst:>13.0e}',
      flush=True,
    )


if __name__ == '__main__':
  main()
