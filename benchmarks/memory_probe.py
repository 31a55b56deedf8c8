"""Why the compiled train step is not linear in depth (memory-efficient).

  python -m benchmarks.memory_probe [--layers 8 16 32]

A dense block reduced to what decides its memory (ReLU, a 1x1 conv over all
earlier maps, a 1x1 conv to k channels; no BN, no 3x3 conv), batch 32 at
32x32, C0=24, k=12, 4k bottleneck, loss on the block output. For each depth,
XLA's compiled temp bytes of the gradient, three ways:

  list         autodiff over the list of maps, as models.DenseBlock does
  list+remat   the same with jax.checkpoint around each layer's bottleneck,
               as memory_efficient=True did before shared_buffer.py
  shared       one buffer for all maps (the efficient PyTorch DenseNets'
               shared storage) and a block-level custom VJP: the forward keeps
               only the final buffer; the backward walks the layers in a
               fori_loop, recomputes each from the final buffer (channels it
               had not seen yet are masked) and accumulates the buffer's
               gradient in one running array

Prints the temp bytes, the dot ops in the compiled autodiff programs (remat's
recomputation shows as extra dots), and the shared variant's gradient
difference from `list`.
Imports no TensorFlow.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
from jax import lax

BATCH, SIZE, C0, K, BOTTLENECK = 32, 32, 24, 12, 4


def _bottleneck(w1, x):
  return jax.nn.relu(jnp.einsum('nhwc,cd->nhwd', jax.nn.relu(x), w1))


def _out(w2, h):
  return jnp.einsum('nhwc,cd->nhwd', h, w2)


def list_block(remat: bool):
  part = jax.checkpoint(_bottleneck) if remat else _bottleneck

  def block(w1s, w2s, x0):
    maps = [x0]
    for w1, w2 in zip(w1s, w2s):
      maps.append(_out(w2, part(w1, jnp.concatenate(maps, -1))))
    return jnp.concatenate(maps, -1)

  return block


def shared_block(num_layers: int):
  total = C0 + num_layers * K
  seen = (
    jnp.arange(total)[None, :] < (C0 + jnp.arange(num_layers) * K)[:, None]
  ).astype(jnp.float32)

  def pad(w1s):  # [L, total, 4k]: layer l's rows beyond its inputs are 0
    return jnp.stack(
      [jnp.pad(w, ((0, total - w.shape[0]), (0, 0))) for w in w1s]
    )

  def layer(w1, w2, buffer, index):
    return _out(w2, _bottleneck(w1, buffer * seen[index]))

  def forward(w1, w2, x0):
    buffer = jnp.concatenate(
      [x0, jnp.zeros((*x0.shape[:3], num_layers * K), x0.dtype)], -1
    )

    def body(index, buffer):
      new = layer(w1[index], w2[index], buffer, index)
      return lax.dynamic_update_slice_in_dim(buffer, new, C0 + index * K, 3)

    return lax.fori_loop(0, num_layers, body, buffer)

  @jax.custom_vjp
  def stacked(w1, w2, x0):
    return forward(w1, w2, x0)

  def fwd(w1, w2, x0):
    buffer = forward(w1, w2, x0)
    return buffer, (w1, w2, buffer)

  def bwd(saved, grad):
    w1, w2, buffer = saved

    def body(i, carry):
      index = num_layers - 1 - i
      d_buffer, d_w1, d_w2 = carry
      d_new = lax.dynamic_slice_in_dim(d_buffer, C0 + index * K, K, 3)
      _, vjp = jax.vjp(
        lambda a, b, buf: layer(a, b, buf, index), w1[index], w2[index], buffer
      )
      g1, g2, g_buffer = vjp(d_new)
      return d_buffer + g_buffer, d_w1.at[index].set(g1), d_w2.at[index].set(g2)

    d_buffer, d_w1, d_w2 = lax.fori_loop(
      0, num_layers, body, (grad, jnp.zeros_like(w1), jnp.zeros_like(w2))
    )
    return d_w1, d_w2, d_buffer[..., :C0]

  stacked.defvjp(fwd, bwd)

  def block(w1s, w2s, x0):
    return stacked(pad(w1s), jnp.stack(w2s), x0)

  return block


def measure(num_layers: int) -> dict:
  keys = jax.random.split(jax.random.key(0), 2 * num_layers + 1)
  w1s = [
    jax.random.normal(keys[i], (C0 + i * K, BOTTLENECK * K)) * 0.1
    for i in range(num_layers)
  ]
  w2s = [
    jax.random.normal(keys[num_layers + i], (BOTTLENECK * K, K)) * 0.1
    for i in range(num_layers)
  ]
  x0 = jax.random.normal(keys[-1], (BATCH, SIZE, SIZE, C0))
  variants = {
    'list': list_block(False),
    'list+remat': list_block(True),
    'shared': shared_block(num_layers),
  }
  row, reference = {'layers': num_layers}, None
  for name, block in variants.items():
    grad = jax.jit(
      jax.grad(lambda a, b, c: jnp.sum(block(a, b, c) ** 2), argnums=(0, 1, 2))
    )
    compiled = grad.lower(w1s, w2s, x0).compile()
    row[name] = compiled.memory_analysis().temp_size_in_bytes
    row[f'{name}_dots'] = compiled.as_text().count(' dot(')
    grads = jax.tree_util.tree_leaves(compiled(w1s, w2s, x0))
    if reference is None:
      reference = grads
    row[f'{name}_max_rel_diff'] = max(
      float(jnp.max(jnp.abs(g - r)) / jnp.max(jnp.abs(r)))
      for g, r in zip(grads, reference)
    )
  return row


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--layers', type=int, nargs='*', default=(8, 16, 32))
  args = parser.parse_args(argv)
  print(
    f'Reduced dense block, batch {BATCH} at {SIZE}x{SIZE}, C0={C0}, k={K},'
    f' on {jax.devices()[0].device_kind}: XLA temp MB of the gradient'
  )
  print(
    f'{"layers":>6} {"list":>8} {"list+remat":>11} {"shared":>8} '
    f'{"shared/list":>11} {"dots list/remat":>16} '
    f'{"max rel diff (shared)":>22}'
  )
  for num_layers in args.layers:
    r = measure(num_layers)
    mb = lambda name: r[name] / 2**20  # noqa: E731
    print(
      f'{num_layers:>6} {mb("list"):>8,.0f} {mb("list+remat"):>11,.0f} '
      f'{mb("shared"):>8,.0f} {r["shared"] / r["list"]:>11.2f} '
      f'{r["list_dots"]:>9}/{r["list+remat_dots"]:<6} '
      f'{r["shared_max_rel_diff"]:>22.1e}',
      flush=True,
    )


if __name__ == '__main__':
  main()
