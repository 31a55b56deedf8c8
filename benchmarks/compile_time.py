"""Cold compile time of the train step, and what it is made of.

  python -m benchmarks.compile_time [--cases fer_densenet@48x1:64 ...]
                                    [--modes plain memory_efficient]
                                    [--rng_impl rbg] [--steps 8]
                                    [--compiler_options '{"k": v}']
                                    [--overrides '{"drop_rate": 0}']
                                    [--json out.json]

For each case (benchmarks.train_step's model@SIZExCHANNELS:BATCH) and mode,
in a fresh process (no persistent cache, nothing compiled before): the
seconds to trace and lower the jitted train step, the seconds XLA takes to
compile it, its StableHLO op count, and the operations of the optimised
program's entry computation, the kernels XLA:CPU generates code for one by
one (fusions, dots, convolutions, copies). The compile time mostly
follows the kernel count. The model keeps its preset's dropout, as
train.py compiles it; --rng_impl is config.rng_impl, the PRNG of its keys
(rbg: XLA's random-bits op; threefry, the default: on CPU, the hash of
layers.bernoulli). With --steps, the compiled step also runs that many
times on random images: the median ms of the steps after the first two.
--compiler_options go to XLA with the compile (e.g.
'{"xla_backend_optimization_level": 1}'); --overrides are DenseNet fields
(e.g. '{"drop_rate": 0}', or '{"segment_size": 1}' to unroll the
memory-efficient blocks). XLA_FLAGS reach the subprocesses.
Imports no TensorFlow.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import subprocess
import sys
import time

DEFAULT_CASES = ('fer_densenet@48x1:64', 'densenet121@224x3:8')
MODES = ('plain', 'memory_efficient')


def case_step(case: dict, mode: str, overrides: dict | None = None):
  """(the jitted train step of a case in `mode`, a fresh state, the model),
  the preset's dropout kept unless `overrides` (DenseNet fields) change it,
  SGD with Nesterov momentum."""
  import optax

  from benchmarks import memory
  from densenet_flax import models

  model = models.create_model(
    case['model'],
    num_classes=case['num_classes'],
    memory_efficient=mode == 'memory_efficient',
    **(overrides or {}),
  )
  step, state = memory.jitted_step(
    model,
    (case['size'], case['size'], case['channels']),
    case['num_classes'],
    optax.sgd(0.01, momentum=0.9, nesterov=True),
  )
  return step, state, model


def random_batch(case: dict) -> dict:
  """A batch of random images and labels of the case's shapes (numpy)."""
  import numpy as np

  rng = np.random.default_rng(0)
  shape = (case['batch'], case['size'], case['size'], case['channels'])
  return {
    'image': rng.random(shape, np.float32),
    'label': rng.integers(
      0, case['num_classes'], case['batch'], dtype=np.int32
    ),
  }


def measure(
  case: dict,
  mode: str,
  rng_impl: str = 'threefry2x32',
  steps: int = 0,
  compiler_options: dict | None = None,
  overrides: dict | None = None,
) -> dict:
  """Lower and compile one train step cold; the figures of `main`'s table."""
  import jax
  import numpy as np

  step, state, model = case_step(case, mode, overrides)
  shape = (case['size'], case['size'], case['channels'])
  batch = {
    'image': jax.ShapeDtypeStruct((case['batch'], *shape), 'float32'),
    'label': jax.ShapeDtypeStruct((case['batch'],), 'int32'),
  }
  start = time.perf_counter()
  lowered = step.lower(state, batch, jax.random.key(0, impl=rng_impl))
  lower_s = time.perf_counter() - start
  start = time.perf_counter()
  compiled = lowered.compile(compiler_options=compiler_options or None)
  compile_s = time.perf_counter() - start
  step_ms = None
  if steps:
    data = random_batch(case)
    times = []
    for i in range(steps):
      start = time.perf_counter()
      state, metrics = compiled(state, data, jax.random.key(i, impl=rng_impl))
      jax.block_until_ready(metrics)
      times.append(time.perf_counter() - start)
    step_ms = 1000 * float(np.median(times[2:] or times))
  program = compiled.as_text()
  entry = program[program.find('\nENTRY') :]
  kernels = collections.Counter(
    op
    for op in re.findall(r'= \S+ ([\w-]+)\(', entry)
    if op
    not in ('parameter', 'constant', 'bitcast', 'get-tuple-element', 'tuple')
  )
  analysis = compiled.memory_analysis()
  return {
    **case,
    'mode': mode,
    'drop_rate': model.drop_rate,
    'rng_impl': rng_impl,
    'compiler_options': compiler_options or {},
    'overrides': overrides or {},
    'xla_flags': os.environ.get('XLA_FLAGS', ''),
    'step_ms': step_ms,
    'lower_s': lower_s,
    'compile_s': compile_s,
    'stablehlo_ops': len(re.findall(r'= "?stablehlo\.', lowered.as_text())),
    'kernels': sum(kernels.values()),
    'kernel_kinds': dict(kernels),
    'xla_temp_bytes': int(analysis.temp_size_in_bytes)
    if analysis is not None
    else None,
    'backend': jax.default_backend(),
    'jax': jax.__version__,
  }


def measure_in_subprocess(
  case_text: str,
  mode: str,
  rng_impl: str = 'threefry2x32',
  steps: int = 0,
  compiler_options: str = '',
  overrides: str = '',
) -> dict:
  out = subprocess.run(
    [
      sys.executable,
      '-m',
      'benchmarks.compile_time',
      '--one',
      case_text,
      mode,
      '--rng_impl',
      rng_impl,
      '--steps',
      str(steps),
      '--compiler_options',
      compiler_options,
      '--overrides',
      overrides,
    ],
    capture_output=True,
    text=True,
    check=True,
    cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
  )
  return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
  from benchmarks import train_step
  from densenet_flax import config
  from densenet_flax import models

  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--cases', nargs='*', default=list(DEFAULT_CASES))
  parser.add_argument('--modes', nargs='*', choices=MODES, default=list(MODES))
  parser.add_argument(
    '--rng_impl', choices=config.RNG_IMPLS, default='threefry2x32'
  )
  parser.add_argument('--steps', type=int, default=0)
  parser.add_argument('--compiler_options', default='')
  parser.add_argument('--overrides', default='')
  parser.add_argument('--json')
  parser.add_argument('--one', nargs=2, help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.one:
    print(
      json.dumps(
        measure(
          train_step.parse_case(args.one[0]),
          args.one[1],
          args.rng_impl,
          args.steps,
          json.loads(args.compiler_options or '{}'),
          json.loads(args.overrides or '{}'),
        )
      )
    )
    return
  for text in args.cases:
    train_step.parse_case(text)  # fail early on a bad case
  rows = []
  json.loads(args.compiler_options or '{}')  # fail early on bad JSON
  overrides = set(json.loads(args.overrides or '{}'))
  unknown = sorted(overrides - set(models.MODEL_FIELDS))
  if unknown:
    raise SystemExit(
      f'--overrides: {", ".join(unknown)}: not DenseNet '
      f'fields ({", ".join(models.MODEL_FIELDS)})'
    )
  if overrides & {'memory_efficient', 'num_classes'}:
    raise SystemExit(
      '--overrides: memory_efficient comes from --modes and '
      'num_classes from the case'
    )
  print(
    f'keys: {args.rng_impl}; compiler options: '
    f'{args.compiler_options or "none"}; model overrides: '
    f'{args.overrides or "none"}; XLA_FLAGS: '
    f'{os.environ.get("XLA_FLAGS") or "none"}'
  )
  print(
    f'{"case":<28} {"mode":<17} {"lower s":>8} {"compile s":>10} '
    f'{"StableHLO ops":>14} {"kernels":>8} {"fusions":>8} '
    f'{"XLA temp MB":>12} {"step ms":>8}'
  )
  for text in args.cases:
    for mode in args.modes:
      row = measure_in_subprocess(
        text,
        mode,
        args.rng_impl,
        args.steps,
        args.compiler_options,
        args.overrides,
      )
      rows.append(row)
      temp, step_ms = row['xla_temp_bytes'], row['step_ms']
      print(
        f'{text:<28} {mode:<17} {row["lower_s"]:>8.1f} '
        f'{row["compile_s"]:>10.1f} {row["stablehlo_ops"]:>14,} '
        f'{row["kernels"]:>8,} {row["kernel_kinds"].get("fusion", 0):>8,} '
        f'{"-" if temp is None else f"{temp / 1e6:,.0f}":>12} '
        f'{"-" if step_ms is None else f"{step_ms:,.0f}":>8}',
        flush=True,
      )
  if args.json:
    with open(args.json, 'w') as f:
      json.dump({'machine': train_step.machine(), 'rows': rows}, f, indent=1)
    print(f'wrote {args.json}')


if __name__ == '__main__':
  main()
