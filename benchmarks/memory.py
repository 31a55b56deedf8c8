"""Memory of a DenseNet-BC train step against depth: plain vs memory-efficient.

  python -m benchmarks.memory [--batch 64] [--compile] [--time] [--json out.json]

For DenseNet-BC at depth L = 100, 190, 250 with growth rate k = 12 and 40
(CIFAR stem, 32x32x3, 10 classes), memory_efficient off and on:
  - saved bytes: what the forward pass keeps for the backward pass, counted
    from the traced step (jax's saved_residuals; arguments excluded). This is
    the honest measure on CPU, where XLA's buffer sharing hides it.
  - with --compile: XLA's compiled memory analysis (temp bytes) of the step,
    and on a GPU the peak bytes in use over a few steps.
  - with --time: step time of both modes at BC-190-40 (the overhead of
    recomputation), interleaved, at --time_batch.
The saved bytes should grow like the layer count (L=250 vs L=100: 2.6x), not
its square (6.6x). Imports no TensorFlow.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from densenet_flax import models
from densenet_flax import steps

DEPTHS = (100, 190, 250)
GROWTH_RATES = (12, 40)


def saved_residuals(fn, *args):
  """[(aval, description)] of what `fn`'s backward pass keeps."""
  try:  # public from jax 0.4.x as a printer; the list lives here
    from jax._src.ad_checkpoint import saved_residuals as impl
  except ImportError:  # pragma: no cover
    from jax.ad_checkpoint import saved_residuals as impl
  return impl(fn, *args)


def bc_model(depth: int, growth_rate: int, memory_efficient: bool):
  layers = (depth - 4) // 6
  return models.create_model(
      'densenet_bc_100_12', num_classes=10, growth_rate=growth_rate,
      block_sizes=(layers,) * 3, num_init_features=2 * growth_rate,
      memory_efficient=memory_efficient)


def loss_fn(model, batch_stats, images, labels):
  def loss(params):
    logits, _ = model.apply({'params': params, 'batch_stats': batch_stats},
                            images, train=True, mutable=['batch_stats'])
    return jnp.mean(steps.cross_entropy(logits, jax.nn.one_hot(labels, 10)))
  return loss


def jitted_step(model, image_shape):
  """(the jitted train step of `model`, a fresh state) for 10 classes."""
  state = steps.create_train_state(jax.random.key(0), model,
                                   optax.sgd(0.1, 0.9), image_shape)
  step = jax.jit(functools.partial(steps.train_step, num_classes=10),
                 donate_argnums=0)
  return step, state


def measure(depth, growth_rate, memory_efficient, batch, compile_step,
            image_size=32):
  model = bc_model(depth, growth_rate, memory_efficient)
  images = jax.ShapeDtypeStruct((batch, image_size, image_size, 3),
                                jnp.float32)
  variables = jax.eval_shape(model.init, jax.random.key(0), images)
  labels = jnp.zeros((batch,), jnp.int32)
  params = jax.tree_util.tree_map(
      lambda s: jnp.zeros(s.shape, s.dtype), variables['params'])
  stats = jax.tree_util.tree_map(
      lambda s: jnp.zeros(s.shape, s.dtype), variables['batch_stats'])
  x = jnp.zeros(images.shape, images.dtype)
  residuals = saved_residuals(loss_fn(model, stats, x, labels), params)
  saved = sum(int(np.prod(a.shape)) * a.dtype.itemsize
              for a, why in residuals if not why.startswith('from the argument'))
  result = {'depth': depth, 'growth_rate': growth_rate,
            'memory_efficient': memory_efficient, 'batch': batch,
            'params': int(sum(np.prod(p.shape) for p in
                              jax.tree_util.tree_leaves(params))),
            'saved_bytes': saved, 'saved_arrays': len(residuals)}
  if compile_step:
    step, state = jitted_step(model, images.shape[1:])
    batch_data = {'image': x, 'label': labels}
    start = time.perf_counter()
    compiled = step.lower(state, batch_data, jax.random.key(0)).compile()
    result['compile_s'] = time.perf_counter() - start
    analysis = compiled.memory_analysis()
    if analysis is not None:
      result['xla_temp_bytes'] = int(analysis.temp_size_in_bytes)
    if jax.default_backend() == 'gpu':
      for _ in range(3):
        state, metrics = compiled(state, batch_data, jax.random.key(0))
      jax.block_until_ready(metrics)
      stats_now = jax.devices()[0].memory_stats() or {}
      result['peak_bytes_in_use'] = stats_now.get('peak_bytes_in_use')
  return result


def time_modes(depth, growth_rate, batch, rounds=3, steps_per_round=2):
  """Median step seconds of plain and memory-efficient, timed in turns."""
  images = jax.random.normal(jax.random.key(1), (batch, 32, 32, 3))
  labels = jnp.arange(batch) % 10
  runners = {}
  for mode in (False, True):
    model = bc_model(depth, growth_rate, mode)
    step, state = jitted_step(model, images.shape[1:])
    batch_data = {'image': images, 'label': labels}
    state, metrics = step(state, batch_data, jax.random.key(0))
    jax.block_until_ready(metrics)
    runners[mode] = [step, state, batch_data, []]
  for _ in range(rounds):
    for mode, runner in runners.items():
      step, state, batch_data, times = runner
      for _ in range(steps_per_round):
        start = time.perf_counter()
        state, metrics = step(state, batch_data, jax.random.key(0))
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - start)
      runner[1] = state
  return {('memory_efficient' if mode else 'plain'):
          statistics.median(runner[3]) for mode, runner in runners.items()}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--batch', type=int, default=64)
  parser.add_argument('--depths', type=int, nargs='*', default=DEPTHS)
  parser.add_argument('--growth_rates', type=int, nargs='*',
                      default=GROWTH_RATES)
  parser.add_argument('--compile', action='store_true',
                      help='also compile each step for XLA memory analysis')
  parser.add_argument('--time', action='store_true',
                      help='also time both modes at BC-190-40')
  parser.add_argument('--time_batch', type=int, default=8)
  parser.add_argument('--json', default=None)
  args = parser.parse_args(argv)

  rows = []
  print(f'DenseNet-BC train step, batch {args.batch} at 32x32x3, on '
        f'{jax.devices()[0].device_kind}')
  print(f'{"L":>4} {"k":>3} {"params":>11} {"plain MB":>10} {"eff. MB":>9} '
        f'{"eff/plain":>9} {"XLA temp plain":>15} {"XLA temp eff.":>14}')
  for k in args.growth_rates:
    for depth in args.depths:
      plain = measure(depth, k, False, args.batch, args.compile)
      efficient = measure(depth, k, True, args.batch, args.compile)
      rows += [plain, efficient]
      temp = lambda r: (f'{r["xla_temp_bytes"] / 2**20:,.0f} MB'
                        if 'xla_temp_bytes' in r else '-')
      print(f'{depth:>4} {k:>3} {plain["params"]:>11,} '
            f'{plain["saved_bytes"] / 2**20:>10,.0f} '
            f'{efficient["saved_bytes"] / 2**20:>9,.0f} '
            f'{efficient["saved_bytes"] / plain["saved_bytes"]:>9.2f} '
            f'{temp(plain):>15} {temp(efficient):>14}', flush=True)
  report = {'device': str(jax.devices()[0].device_kind),
            'batch': args.batch, 'rows': rows, 'growth': {}}
  for k in args.growth_rates:
    for mode in (False, True):
      by_depth = {r['depth']: r['saved_bytes'] for r in rows
                  if r['growth_rate'] == k and r['memory_efficient'] == mode}
      if 100 in by_depth and 250 in by_depth:
        ratio = by_depth[250] / by_depth[100]
        report['growth'][f'k{k}_{"efficient" if mode else "plain"}'] = ratio
        print(f'k={k} {"memory-efficient" if mode else "plain":>16}: saved '
              f'bytes L=250 / L=100 = {ratio:.2f} (layers: 2.56, square: '
              f'6.57)')
  if args.time:
    times = time_modes(190, 40, args.time_batch)
    report['time_bc_190_40'] = dict(times, batch=args.time_batch)
    print(f'BC-190-40 step, batch {args.time_batch}: plain '
          f'{times["plain"]:.2f} s, memory-efficient '
          f'{times["memory_efficient"]:.2f} s '
          f'({times["memory_efficient"] / times["plain"] - 1:+.1%})')
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(report, f, indent=2)
    print(f'wrote {args.json}')


if __name__ == '__main__':
  main()
