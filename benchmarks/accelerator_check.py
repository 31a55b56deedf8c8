"""A few minutes on a GPU or TPU: is the train step fast, frugal and right?

  python -m benchmarks.accelerator_check [--case fer_densenet@48x1:256]
      [--modes plain memory_efficient] [--dtypes float32 bfloat16]
      [--steps 30] [--overrides '{"block_sizes": [2, 2]}'] [--json out.json]

On synthetic data made on the device (one fixed batch of random images and
labels), for each mode and compute dtype, each in a fresh process so that
its peak memory is its own:
  - the seconds to compile the jitted train step (JAX's cache off);
  - images/second over the steps after the first (the clock stops when the
    last step's result is ready);
  - peak device memory: the allocator's peak bytes in use (GPU, TPU). The
    CPU backend keeps no such counter, so there the column holds XLA's
    compiled argument + output + temp bytes instead, labelled as a proxy;
and two checks, which set the exit status:
  - the loss falls over the steps (the network memorises the batch: the
    mean of the last 3 losses under 0.8x the first 3);
  - plain and memory-efficient gradients agree (float32, no dropout, the
    highest matmul precision): max |difference| at most 1e-4 of the largest
    gradient.
On a host with several devices it also runs benchmarks.parallelism over all
of them (float32, plain): shard_map against pmap, ms/image, compile seconds
and XLA memory per device, and checks that the two end with the same loss.
The step runs with the kernels this backend picks (DENSENET_FLAX_KERNELS
may override them). The case is benchmarks.train_step's
model@SIZExCHANNELS:BATCH; --overrides are DenseNet fields. The parent
process never starts JAX, so no process holds device memory the others need.
Imports no TensorFlow.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODES = ('plain', 'memory_efficient')
DTYPES = ('float32', 'bfloat16')
DEFAULT_CASE = 'fer_densenet@48x1:256'
LOSS_DROP = 0.8  # last-3 mean loss must be under this x first-3 mean
GRADIENT_TOLERANCE = 1e-4  # of the largest gradient


def _setup(case: dict, mode: str, dtype: str, overrides: dict, seed: int = 0):
  """(model, fresh state, batch on the device, jitted train step)."""
  import jax
  import jax.numpy as jnp
  import optax

  from densenet_flax import models
  from densenet_flax import steps

  model = models.create_model(
    case['model'],
    num_classes=case['num_classes'],
    memory_efficient=mode == 'memory_efficient',
    dtype=jnp.dtype(dtype),
    **overrides,
  )
  shape = (case['size'], case['size'], case['channels'])
  state = steps.create_train_state(
    jax.random.key(seed),
    model,
    optax.sgd(0.05, momentum=0.9, nesterov=True),
    shape,
  )
  image_key, label_key = jax.random.split(jax.random.key(seed + 1))
  batch = {
    'image': jax.random.normal(image_key, (case['batch'], *shape)),
    'label': jax.random.randint(
      label_key, (case['batch'],), 0, case['num_classes']
    ),
  }
  step = jax.jit(
    functools.partial(
      steps.train_step, spec=steps.TrainSpec(num_classes=case['num_classes'])
    ),
    donate_argnums=0,
  )
  return model, state, batch, step


def measure(
  case: dict, mode: str, dtype: str, num_steps: int, overrides: dict
) -> dict:
  """One variant's figures, in this process (which should be fresh)."""
  import jax
  import numpy as np

  jax.config.update('jax_enable_compilation_cache', False)
  _, state, batch, step = _setup(case, mode, dtype, overrides)
  rng = jax.random.key(2)
  start = time.perf_counter()
  compiled = step.lower(state, batch, rng).compile()
  compile_s = time.perf_counter() - start
  losses = []
  state, metrics = compiled(state, batch, rng)
  losses.append(metrics['loss'])
  jax.block_until_ready(metrics)
  start = time.perf_counter()
  for _ in range(num_steps - 1):
    state, metrics = compiled(state, batch, rng)
    losses.append(metrics['loss'])
  jax.block_until_ready(metrics)
  seconds = time.perf_counter() - start
  losses = [float(x) for x in jax.device_get(losses)]
  device = jax.devices()[0]
  stats = device.memory_stats() or {}
  row = {
    'mode': mode,
    'dtype': dtype,
    'compile_s': compile_s,
    'images_per_s': (num_steps - 1) * case['batch'] / seconds,
    'losses': losses,
    'backend': jax.default_backend(),
    'device': device.device_kind,
    'jax': jax.__version__,
  }
  if 'peak_bytes_in_use' in stats:
    row['peak_bytes'] = int(stats['peak_bytes_in_use'])
  else:
    analysis = compiled.memory_analysis()
    row['compiled_bytes_proxy'] = int(
      analysis.argument_size_in_bytes
      + analysis.output_size_in_bytes
      + analysis.temp_size_in_bytes
    )
  first, last = np.mean(losses[:3]), np.mean(losses[-3:])
  row['loss_falls'] = bool(np.isfinite(last) and last < LOSS_DROP * first)
  return row


def gradient_agreement(case: dict, overrides: dict) -> dict:
  """Plain against memory-efficient gradients of the same float32 params."""
  import jax
  import jax.numpy as jnp
  import numpy as np

  overrides = dict(overrides, drop_rate=0.0)  # the two draw other masks
  grads = []
  with jax.default_matmul_precision('highest'):
    for mode in MODES:
      model, state, batch, _ = _setup(case, mode, 'float32', overrides)

      def loss(params, model=model, state=state, batch=batch):
        logits, _ = model.apply(
          {'params': params, 'batch_stats': state.batch_stats},
          batch['image'],
          train=True,
          mutable=['batch_stats'],
        )
        return -jnp.mean(
          jnp.take_along_axis(
            jax.nn.log_softmax(logits), batch['label'][:, None], -1
          )
        )

      grads.append(jax.device_get(jax.jit(jax.grad(loss))(state.params)))
  diffs = jax.tree_util.tree_leaves(
    jax.tree_util.tree_map(lambda a, b: float(np.max(np.abs(a - b))), *grads)
  )
  largest = max(
    float(np.max(np.abs(g))) for g in jax.tree_util.tree_leaves(grads[0])
  )
  relative = max(diffs) / largest
  return {
    'max_abs_difference': max(diffs),
    'largest_gradient': largest,
    'relative': relative,
    'agree': relative <= GRADIENT_TOLERANCE,
  }


def _in_subprocess(*args: str) -> dict:
  out = subprocess.run(
    [sys.executable, '-m', 'benchmarks.accelerator_check', *args],
    capture_output=True,
    text=True,
    cwd=REPO,
    check=False,
  )
  if out.returncode != 0:
    return {'error': (out.stderr.strip().splitlines() or ['failed'])[-1]}
  return json.loads(out.stdout.strip().splitlines()[-1])


def device_count() -> dict:
  """This backend's local device count, in this (fresh) process."""
  import jax

  return {'count': jax.local_device_count(), 'backend': jax.default_backend()}


def compare_parallelisms(case_text: str, steps: int, overrides: str) -> dict:
  """benchmarks.parallelism's figures of both paths over all local devices,
  and whether they end with the same loss."""
  from benchmarks import parallelism

  found = _in_subprocess('--devices')
  if found.get('count', 1) < 2:
    return {'skipped': f'{found.get("count", 1)} device(s)'}
  layout = f'1x{found["count"]}'
  args = argparse.Namespace(case=case_text, overrides=overrides, steps=steps)
  rows = [
    parallelism.run_layout(layout, p, args, backend_is_cpu=False)
    for p in parallelism.PARALLELISMS
  ]
  losses = {row['parallelism']: row['final_loss'] for row in rows}
  return {
    'rows': rows,
    'same_loss': len(set(losses.values())) == 1,
    'losses': losses,
  }


def _mb(n) -> str:
  return '-' if n is None else f'{n / 2**20:,.0f}'


def main(argv=None) -> int:
  from benchmarks import train_step

  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--case', default=DEFAULT_CASE)
  parser.add_argument('--modes', nargs='*', choices=MODES, default=list(MODES))
  parser.add_argument(
    '--dtypes', nargs='*', choices=DTYPES, default=list(DTYPES)
  )
  parser.add_argument('--steps', type=int, default=30)
  parser.add_argument(
    '--parallelism_steps',
    type=int,
    default=10,
    help='steps of the shard_map against pmap comparison (several devices)',
  )
  parser.add_argument('--overrides', default='{}')
  parser.add_argument('--json')
  parser.add_argument('--one', nargs=2, help=argparse.SUPPRESS)
  parser.add_argument(
    '--gradients', action='store_true', help=argparse.SUPPRESS
  )
  parser.add_argument('--devices', action='store_true', help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  case = train_step.parse_case(args.case)
  overrides = json.loads(args.overrides)
  if args.steps < 6:
    parser.error('--steps: at least 6 (the loss check compares 3 and 3)')
  if args.one:
    print(json.dumps(measure(case, *args.one, args.steps, overrides)))
    return 0
  if args.gradients:
    print(json.dumps(gradient_agreement(case, overrides)))
    return 0
  if args.devices:
    print(json.dumps(device_count()))
    return 0

  common = [
    '--case',
    args.case,
    '--steps',
    str(args.steps),
    '--overrides',
    args.overrides,
  ]
  print(f'{args.case}, {args.steps} steps, overrides {args.overrides}')
  print(
    f'{"mode":<17} {"dtype":<9} {"compile s":>9} {"images/s":>9} '
    f'{"peak MB":>9} {"loss first -> last":>20}  check'
  )
  rows, ok = [], True
  for mode in args.modes:
    for dtype in args.dtypes:
      row = dict(
        _in_subprocess('--one', mode, dtype, *common), mode=mode, dtype=dtype
      )
      rows.append(row)
      if 'error' in row:
        ok = False
        print(f'{mode:<17} {dtype:<9} failed: {row["error"]}')
        continue
      ok &= row['loss_falls']
      peak = (
        _mb(row['peak_bytes'])
        if 'peak_bytes' in row
        else _mb(row['compiled_bytes_proxy']) + '*'
      )
      print(
        f'{mode:<17} {dtype:<9} {row["compile_s"]:>9.1f} '
        f'{row["images_per_s"]:>9,.0f} {peak:>9} '
        f'{row["losses"][0]:>9.3f} -> {row["losses"][-1]:<7.3f}  '
        f'{"loss falls" if row["loss_falls"] else "LOSS DOES NOT FALL"}',
        flush=True,
      )
  report = {
    'case': case,
    'steps': args.steps,
    'overrides': overrides,
    'rows': rows,
    'machine': train_step.machine(),
  }
  if set(MODES) <= set(args.modes):
    gradients = _in_subprocess('--gradients', *common)
    report['gradients'] = gradients
    agree = gradients.get('agree', False)
    ok &= agree
    print(
      f'plain vs memory-efficient gradients (float32): max |difference| '
      f'{gradients.get("max_abs_difference", float("nan")):.2e} of '
      f'{gradients.get("largest_gradient", float("nan")):.2e}: '
      f'{"agree" if agree else gradients.get("error", "DISAGREE")}'
    )
  parallel = compare_parallelisms(
    args.case, args.parallelism_steps, args.overrides
  )
  report['parallelism'] = parallel
  if 'rows' in parallel:
    ok &= parallel['same_loss']
    for row in parallel['rows']:
      print(
        f'{row["parallelism"]:<9} over {row["devices"]} devices: '
        f'{row["ms_per_image"]:.3f} ms/image, compile {row["compile_s"]:.1f} '
        f's, arguments {_mb(row["argument_bytes"])} MB/device (state '
        f'{_mb(row["state_bytes"])} MB), temp {_mb(row["temp_bytes"])} MB'
      )
    print(
      'shard_map and pmap end with the same loss'
      if parallel['same_loss']
      else f'SHARD_MAP AND PMAP DIFFER: {parallel["losses"]}'
    )
  else:
    print(f'shard_map against pmap: skipped ({parallel["skipped"]})')
  device = next((r for r in rows if 'device' in r), {})
  print(
    f'device: {device.get("device", "?")} ({device.get("backend", "?")}, '
    f'jax {device.get("jax", "?")})'
  )
  if any('compiled_bytes_proxy' in r for r in rows):
    print(
      "* no allocator counter on this backend: XLA's compiled argument + "
      'output + temp bytes stand in (a proxy)'
    )
  print('all checks passed' if ok else 'CHECKS FAILED')
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(report, f, indent=1)
    print(f'wrote {args.json}')
  return 0 if ok else 1


if __name__ == '__main__':
  sys.exit(main())
