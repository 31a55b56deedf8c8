"""Memory of a DenseNet-BC train step against depth: plain vs memory-efficient.

  python -m benchmarks.memory [--batch 32] [--depths 52 100 196] [--time]
                              [--json out.json]

For DenseNet-BC at each depth L (CIFAR stem, 32x32x3, 10 classes, three
blocks of (L - 4) / 6 layers) and growth rate k, memory_efficient off and on,
XLA's compiled memory analysis of the jitted train step: temp bytes (what
the program allocates besides its arguments and outputs) and argument bytes
(the train state and the batch), the compile time, and on a GPU the peak
bytes in use over a few steps (each row in its own process there). With
--time: step time of both modes at BC-190-40 (the cost of recomputation),
interleaved, at --time_batch.
memory_efficient's temp bytes should grow like the layer count (2x per
doubling), not its square (4x). Imports no TensorFlow.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from densenet_flax import models
from densenet_flax import steps

DEPTHS = (52, 100, 196)  # 8, 16, 32 layers per block
GROWTH_RATES = (12,)


def bc_model(depth: int, growth_rate: int, memory_efficient: bool):
  layers = (depth - 4) // 6
  return models.create_model(
    'densenet_bc_100_12',
    num_classes=10,
    growth_rate=growth_rate,
    block_sizes=(layers,) * 3,
    num_init_features=2 * growth_rate,
    memory_efficient=memory_efficient,
  )


def jitted_step(model, image_shape, num_classes=10, tx=None):
  """(the jitted train step of `model`, a fresh state); tx: SGD by default."""
  state = steps.create_train_state(
    jax.random.key(0), model, tx or optax.sgd(0.1, 0.9), image_shape
  )
  step = jax.jit(
    functools.partial(
      steps.train_step, spec=steps.TrainSpec(num_classes=num_classes)
    ),
    donate_argnums=0,
  )
  return step, state


def compiled_memory(model, batch: int, image_shape, num_classes=10) -> dict:
  """XLA's memory analysis of `model`'s compiled train step, and its compile s.

  On a GPU, also the peak bytes in use after three steps.
  """
  step, state = jitted_step(model, image_shape, num_classes)
  batch_data = {
    'image': jnp.zeros((batch, *image_shape), jnp.float32),
    'label': jnp.zeros((batch,), jnp.int32),
  }
  start = time.perf_counter()
  compiled = step.lower(state, batch_data, jax.random.key(0)).compile()
  result = {'compile_s': time.perf_counter() - start}
  analysis = compiled.memory_analysis()
  if analysis is not None:
    result['xla_temp_bytes'] = int(analysis.temp_size_in_bytes)
    result['xla_argument_bytes'] = int(analysis.argument_size_in_bytes)
  if jax.default_backend() == 'gpu':
    for _ in range(3):
      state, metrics = compiled(state, batch_data, jax.random.key(0))
    jax.block_until_ready(metrics)
    stats_now = jax.devices()[0].memory_stats() or {}
    result['peak_bytes_in_use'] = stats_now.get('peak_bytes_in_use')
  return result


def measure_in_subprocess(depth, growth_rate, memory_efficient, batch):
  """`measure` in a fresh process: a GPU's peak bytes in use never go down,
  so each row needs its own process."""
  out = subprocess.run(
    [
      sys.executable,
      '-m',
      'benchmarks.memory',
      '--one',
      json.dumps([depth, growth_rate, memory_efficient, batch]),
    ],
    capture_output=True,
    text=True,
    check=True,
    cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
  )
  return json.loads(out.stdout.strip().splitlines()[-1])


def measure(depth, growth_rate, memory_efficient, batch, image_size=32):
  model = bc_model(depth, growth_rate, memory_efficient)
  shape = (image_size, image_size, 3)
  variables = jax.eval_shape(
    model.init, jax.random.key(0), jnp.zeros((1, *shape))
  )
  return {
    'depth': depth,
    'growth_rate': growth_rate,
    'memory_efficient': memory_efficient,
    'batch': batch,
    'params': int(
      sum(
        np.prod(p.shape) for p in jax.tree_util.tree_leaves(variables['params'])
      )
    ),
    **compiled_memory(model, batch, shape),
  }


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
  return {
    ('memory_efficient' if mode else 'plain'): statistics.median(runner[3])
    for mode, runner in runners.items()
  }


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--batch', type=int, default=32)
  parser.add_argument('--depths', type=int, nargs='*', default=DEPTHS)
  parser.add_argument(
    '--growth_rates', type=int, nargs='*', default=GROWTH_RATES
  )
  parser.add_argument(
    '--time', action='store_true', help='also time both modes at BC-190-40'
  )
  parser.add_argument('--time_batch', type=int, default=8)
  parser.add_argument('--json', default=None)
  parser.add_argument('--one', default=None, help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.one:  # one row, for measure_in_subprocess
    print(json.dumps(measure(*json.loads(args.one))))
    return
  # On a GPU each row runs in its own process, and this one must not start
  # JAX there: it would hold memory the rows need.
  from benchmarks.train_step import backend_in_subprocess

  platform, device = backend_in_subprocess()
  run = measure_in_subprocess if platform == 'gpu' else measure

  rows = []
  mb = lambda r, key: (
    f'{r[key] / 2**20:,.0f}'
    if r.get(key) is not None  # noqa: E731
    else '-'
  )
  print(
    f'DenseNet-BC train step, batch {args.batch} at 32x32x3, on '
    f'{device}: XLA compiled memory, MB'
  )
  print(
    f'{"L":>4} {"k":>3} {"params":>10} {"temp plain":>11} '
    f'{"temp eff.":>10} {"eff/plain":>9} {"arguments":>10} '
    f'{"compile s plain/eff.":>21} {"GPU peak plain/eff.":>20}'
  )
  for k in args.growth_rates:
    for depth in args.depths:
      plain = run(depth, k, False, args.batch)
      efficient = run(depth, k, True, args.batch)
      rows += [plain, efficient]
      ratio = efficient['xla_temp_bytes'] / plain['xla_temp_bytes']
      print(
        f'{depth:>4} {k:>3} {plain["params"]:>10,} '
        f'{mb(plain, "xla_temp_bytes"):>11} '
        f'{mb(efficient, "xla_temp_bytes"):>10} {ratio:>9.2f} '
        f'{mb(plain, "xla_argument_bytes"):>10} '
        f'{plain["compile_s"]:>10.1f}/{efficient["compile_s"]:<10.1f} '
        f'{mb(plain, "peak_bytes_in_use"):>9}/'
        f'{mb(efficient, "peak_bytes_in_use"):<10}',
        flush=True,
      )
  report = {'device': device, 'batch': args.batch, 'rows': rows, 'growth': {}}
  for k in args.growth_rates:
    for mode in (False, True):
      by_depth = sorted(
        (r['depth'], r['xla_temp_bytes'])
        for r in rows
        if r['growth_rate'] == k and r['memory_efficient'] == mode
      )
      name = 'memory-efficient' if mode else 'plain'
      for (d0, t0), (d1, t1) in zip(by_depth, by_depth[1:]):
        layers_ratio = (d1 - 4) / (d0 - 4)
        report['growth'][f'k{k}_{name}_{d0}_{d1}'] = t1 / t0
        print(
          f'k={k} {name:>16}: temp L={d1} / L={d0} = {t1 / t0:.2f} '
          f'(layers: {layers_ratio:.2f}, square: {layers_ratio**2:.2f})'
        )
  if args.time:
    times = time_modes(190, 40, args.time_batch)
    report['time_bc_190_40'] = dict(times, batch=args.time_batch)
    print(
      f'BC-190-40 step, batch {args.time_batch}: plain '
      f'{times["plain"]:.2f} s, memory-efficient '
      f'{times["memory_efficient"]:.2f} s '
      f'({times["memory_efficient"] / times["plain"] - 1:+.1%})'
    )
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(report, f, indent=2)
    print(f'wrote {args.json}')


if __name__ == '__main__':
  main()
