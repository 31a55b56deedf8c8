"""Where a train step's time goes: its kernels' traced time, by what they do.

  python -m benchmarks.step_profile [--case fer_densenet@48x1:64]
                                    [--modes plain memory_efficient]
                                    [--steps 3] [--top 15]

For each mode, compiles the train step of the case (benchmarks.train_step's
model@SIZExCHANNELS:BATCH, the preset's dropout), runs it a few times on
random images, then traces `--steps` steps with jax.profiler. Each kernel
event of the trace (XLA:CPU names them after the optimised program's
instructions: fusions, dots, convolutions, copies) is attributed to the
op_name of that instruction's metadata, layer indices removed, so the 58
dense layers of `fer_densenet` add up in one row; rows are also summed into
coarse groups by op_name (a heuristic, printed as such).

The figures are traced kernel time, summed over the threads that ran them,
per step: a proxy for where the step goes, not its wall time (profiling
slows the step, and two kernels may overlap). The step's wall time is
printed beside them (median of the untraced steps). Kernels that XLA fused
across several ops carry one op_name: the recomputation XLA fuses into a
backward kernel counts where its root op came from. CPU only: other
backends name their kernel events otherwise.
Imports no TensorFlow.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import re
import tempfile
import time

from benchmarks import compile_time

MODES = compile_time.MODES

# (group, test on the kernel kind and op_name), first match wins.
GROUPS = (
  (
    'buffer and gradient updates (dynamic-update-slice)',
    lambda kind, op: (
      'dynamic-update-slice' in kind or op.endswith('dynamic_update_slice')
    ),
  ),
  (
    '3x3 and stem convs, backward',
    lambda kind, op: 'conv_general_dilated' in op and 'transpose(' in op,
  ),
  (
    '3x3 and stem convs, forward',
    lambda kind, op: 'conv_general_dilated' in op,
  ),
  (
    'dropout (with what XLA fused into it)',
    lambda kind, op: re.search(r'[Dd]ropout', op),
  ),
  (
    '1x1 conv and transition dots',
    lambda kind, op: (
      'dot_general' in op or kind == 'dot' or op.endswith('/transpose')
    ),
  ),
  (
    'BN-ReLU, forward and backward',
    lambda kind, op: re.search(r'norm|reduce_sum|where|max$|concatenate', op),
  ),
  ('no metadata (layout transposes, copies)', lambda kind, op: op == ''),
  ('other', lambda kind, op: True),
)


def op_names(hlo_text: str) -> dict[str, str]:
  """Instruction name -> its metadata op_name ('' without), all computations."""
  names = {}
  for line in hlo_text.splitlines():
    m = re.match(r'\s*(?:ROOT )?%([\w.-]+) = ', line)
    if m:
      op = re.search(r'op_name="([^"]*)"', line)
      names[m.group(1)] = op.group(1) if op else ''
  return names


def layer_free(op_name: str) -> str:
  """The op_name without the step's prefix and the layers' indices."""
  op = re.sub(r'^jit\([\w.]+\)/', '', op_name)
  op = re.sub(r'denselayer\d+', 'denselayer*', op)
  op = re.sub(r'denseblock\d+', 'denseblock*', op)
  op = re.sub(r'transition\d+', 'transition*', op)
  return re.sub(r'_\d+\b', '_*', op)


def kernel_times(trace_dir: str, names: dict[str, str]) -> collections.Counter:
  """(kernel kind, layer-free op_name) -> summed microseconds in the trace."""
  files = glob.glob(f'{trace_dir}/**/*.trace.json.gz', recursive=True)
  if not files:
    raise RuntimeError(f'no trace was written under {trace_dir}')
  times = collections.Counter()
  for event in json.load(gzip.open(files[0]))['traceEvents']:
    name = event.get('name')
    if event.get('ph') == 'X' and name in names:
      times[(name.split('.')[0], layer_free(names[name]))] += event['dur']
  return times


def profile(case: dict, mode: str, steps: int, warmup: int = 3) -> dict:
  import jax
  import numpy as np

  step, state, _ = compile_time.case_step(case, mode)
  data = compile_time.random_batch(case)
  compiled = step.lower(state, data, jax.random.key(0)).compile()
  wall = []
  for i in range(warmup + steps):
    start = time.perf_counter()
    state, metrics = compiled(state, data, jax.random.key(i))
    jax.block_until_ready(metrics)
    wall.append(time.perf_counter() - start)
  with tempfile.TemporaryDirectory() as trace_dir:
    jax.profiler.start_trace(trace_dir)
    for i in range(steps):
      state, metrics = compiled(state, data, jax.random.key(i))
      jax.block_until_ready(metrics)
    jax.profiler.stop_trace()
    times = kernel_times(trace_dir, op_names(compiled.as_text()))
  if not times:
    raise RuntimeError(
      f'no kernel events of the program in the trace on '
      f'{jax.default_backend()} (CPU only)'
    )
  per_step = {key: us / steps / 1000 for key, us in times.items()}
  groups = collections.Counter()
  for (kind, op), ms in per_step.items():
    group = next(g for g, test in GROUPS if test(kind, op))
    groups[group] += ms
  return {
    'mode': mode,
    'wall_ms': 1000 * float(np.median(wall[warmup:])),
    'kernel_ms': sum(per_step.values()),
    'groups': groups,
    'rows': per_step,
  }


def main(argv=None):
  from benchmarks import train_step

  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--case', default='fer_densenet@48x1:64')
  parser.add_argument('--modes', nargs='*', choices=MODES, default=list(MODES))
  parser.add_argument('--steps', type=int, default=3)
  parser.add_argument('--top', type=int, default=15)
  args = parser.parse_args(argv)
  case = train_step.parse_case(args.case)
  for mode in args.modes:
    result = profile(case, mode, args.steps)
    print(
      f'\n{args.case}, {mode}: step {result["wall_ms"]:,.0f} ms '
      f'(untraced median); traced kernel time {result["kernel_ms"]:,.0f} '
      f'ms a step (summed over threads)'
    )
    print('  by group (heuristic, from op_name):')
    for group, ms in result['groups'].most_common():
      print(f'  {ms:>9,.1f} ms  {group}')
    print(f'  top {args.top} (kernel kind, op_name without layer indices):')
    rows = sorted(result['rows'].items(), key=lambda kv: -kv[1])
    for (kind, op), ms in rows[: args.top]:
      print(f'  {ms:>9,.1f} ms  {kind:<34} {op[:110]}')


if __name__ == '__main__':
  main()
