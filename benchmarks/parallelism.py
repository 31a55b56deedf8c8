"""shard_map against pmap: step time, compile time and XLA memory.

  python -m benchmarks.parallelism [--case densenet_bc_100_12@32x1:64]
      [--overrides '{"block_sizes": [4, 4, 4]}'] [--layouts 1x8 2x1]
      [--steps 12] [--rounds 2] [--json out.json] [--markdown out.md]

For each layout PROCESSESxDEVICES (processes of that many devices each: fake
CPU devices here; real ones on a GPU/TPU host, where --layouts 1xN uses N of
them) and each config.parallelism, real OS processes (jax.distributed on
127.0.0.1 for more than one) run the train step as train.py builds it:
parallel.DataParallel's compiled steps.train_step, the state donated, on one
fixed random global batch of the case (the same for every layout). Figures:
  - compile_s: the first call's seconds less one step's (trace, lower,
    compile, first run), the persistent cache off;
  - ms/image: the median step (the clock stops when its metrics are ready)
    over the global batch, after two warm-up steps;
  - XLA memory of the compiled step per device: arguments (the state and the
    batch shard: one copy of the state per device), outputs, temp.
Paths run in turns, `--rounds` times each, and the best round counts, so a
noisy machine slows both alike. Imports no TensorFlow.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time

from densenet_flax import config_keys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PARALLELISMS = config_keys.PARALLELISMS


def _worker(args) -> None:
  import functools

  import jax
  import numpy as np
  import optax

  from benchmarks import train_step as train_step_bench
  from densenet_flax import models
  from densenet_flax import parallel
  from densenet_flax import steps

  if args.num_processes > 1:
    parallel.initialize(
      args.coordinator, args.num_processes, args.process_id, timeout_s=120
    )
  case = train_step_bench.parse_case(args.case)
  dp = parallel.DataParallel(parallelism=args.parallelism)
  model = models.create_model(
    case['model'],
    num_classes=case['num_classes'],
    bn_axis_name=dp.axis_name,
    **json.loads(args.overrides),
  )
  shape = (case['size'], case['size'], case['channels'])
  tx = optax.sgd(0.01, momentum=0.9, nesterov=True)
  state = dp.put_replicated(
    steps.create_train_state(jax.random.key(0), model, tx, shape)
  )
  step = dp.compile(
    functools.partial(
      steps.train_step,
      spec=steps.TrainSpec(num_classes=case['num_classes']),
      axis_name=dp.axis_name,
    ),
    donate_state=True,
  )
  rng = np.random.default_rng(0)
  images = rng.random((case['batch'], *shape), np.float32)
  labels = rng.integers(0, case['num_classes'], case['batch'], np.int32)
  per_process = case['batch'] // dp.num_processes
  mine = slice(
    jax.process_index() * per_process, (jax.process_index() + 1) * per_process
  )
  local = {
    'image': images[mine].reshape(dp.num_local_devices, -1, *shape),
    'label': labels[mine].reshape(dp.num_local_devices, -1),
  }
  batch = dp.put_batch(local)
  key = dp.put_broadcast(jax.random.key(1))
  times = []
  for _ in range(args.steps + 1):
    start = time.perf_counter()
    state, metrics = step(state, batch, key)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - start)
  step_s = float(np.median(times[3:] or times[1:]))
  memory = step.lower(state, batch, key).compile().memory_analysis()
  if jax.process_index() == 0:
    print(
      json.dumps(
        {
          'compile_s': times[0] - step_s,
          'step_s': step_s,
          'ms_per_image': 1000 * step_s / case['batch'],
          'devices': dp.num_devices,
          'argument_bytes': int(memory.argument_size_in_bytes),
          'output_bytes': int(memory.output_size_in_bytes),
          'temp_bytes': int(memory.temp_size_in_bytes),
          'alias_bytes': int(memory.alias_size_in_bytes),
          'state_bytes': int(
            sum(
              x.size * x.dtype.itemsize
              for x in jax.tree_util.tree_leaves(dp.first_replica(state))
            )
          ),
          'final_loss': float(
            jax.device_get(dp.first_replica(metrics)['loss'])
          ),
          'backend': jax.default_backend(),
          'jax': jax.__version__,
        }
      ),
      flush=True,
    )


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def run_layout(
  layout: str,
  parallelism: str,
  args,
  backend_is_cpu: bool = True,
) -> dict:
  """One measurement in fresh processes; process 0's JSON figures.

  `args`: case, overrides and steps (as main's flags).
  """
  processes, devices = (int(n) for n in layout.split('x'))
  port = _free_port()
  env = dict(os.environ)
  if backend_is_cpu:
    env['JAX_PLATFORMS'] = 'cpu'
    env['JAX_NUM_CPU_DEVICES'] = str(devices)
  procs = []
  for i in range(processes):
    command = [
      sys.executable,
      '-m',
      'benchmarks.parallelism',
      '--worker',
      '--case',
      args.case,
      '--overrides',
      args.overrides,
      '--steps',
      str(args.steps),
      '--parallelism',
      parallelism,
      '--num_processes',
      str(processes),
      '--process_id',
      str(i),
      '--coordinator',
      f'127.0.0.1:{port}',
    ]
    procs.append(
      subprocess.Popen(
        command,
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
      )
    )
  outputs = [proc.communicate(timeout=3600) for proc in procs]
  for proc, (out, err) in zip(procs, outputs):
    if proc.returncode:
      raise RuntimeError(f'{layout} {parallelism} failed:\n{err[-3000:]}')
  result = json.loads(outputs[0][0].strip().splitlines()[-1])
  return dict(result, layout=layout, parallelism=parallelism)


def markdown(rows: list[dict], args) -> str:
  lines = [
    f'Case {args.case}, overrides {args.overrides}; best of {args.rounds} '
    f'round(s) of {args.steps} steps.',
    '',
    '| processes x devices | parallelism | ms/image | compile s | '
    'arguments MB/device | state MB | temp MB |',
    '|---|---|---|---|---|---|---|',
  ]
  for row in rows:
    lines.append(
      f'| {row["layout"]} | {row["parallelism"]} | '
      f'{row["ms_per_image"]:.2f} | {row["compile_s"]:.1f} | '
      f'{row["argument_bytes"] / 1e6:.2f} | {row["state_bytes"] / 1e6:.2f} | '
      f'{row["temp_bytes"] / 1e6:.1f} |'
    )
  return '\n'.join(lines) + '\n'


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--case', default='densenet_bc_100_12@32x1:64')
  parser.add_argument('--overrides', default='{"block_sizes": [4, 4, 4]}')
  parser.add_argument('--layouts', nargs='+', default=['1x8', '2x1'])
  parser.add_argument('--steps', type=int, default=12)
  parser.add_argument('--rounds', type=int, default=2)
  parser.add_argument('--json')
  parser.add_argument('--markdown')
  parser.add_argument('--worker', action='store_true', help=argparse.SUPPRESS)
  parser.add_argument('--parallelism', default='shard_map')
  parser.add_argument('--num_processes', type=int, default=1)
  parser.add_argument('--process_id', type=int, default=0)
  parser.add_argument('--coordinator', default='')
  args = parser.parse_args(argv)
  if args.worker:
    _worker(args)
    return
  on_cpu = os.environ.get('JAX_PLATFORMS', 'cpu') == 'cpu'
  best = {}
  for _ in range(args.rounds):
    for layout in args.layouts:
      for parallelism in PARALLELISMS:
        row = run_layout(layout, parallelism, args, on_cpu)
        print(json.dumps(row), flush=True)
        key = (layout, parallelism)
        if key not in best or row['step_s'] < best[key]['step_s']:
          best[key] = row
  rows = list(best.values())
  table = markdown(rows, args)
  print(table)
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(rows, f, indent=2)
  if args.markdown:
    with open(args.markdown, 'w') as f:
      f.write(table)


if __name__ == '__main__':
  main()
