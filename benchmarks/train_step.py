"""Train-step speed and memory: ours against Keras 3 and PyTorch, interleaved.

  python -m benchmarks.train_step [--cases ...] [--variants ...] [--json out.json]

Each implementation runs in its own worker process (benchmarks.step_worker),
all set up first, then timed in turns, round after round, so that a noisy
machine slows every implementation alike and the ratios stay trustworthy.
Reported per variant: compile (or first-step) time, median step time with its
min and max over all timed steps, images/second, peak RSS of its process,
XLA's compiled memory (ours) and peak device memory (GPU). Ratios are
images/second of ours (float32) over each peer's: above 1.0 we are faster.

Peers that are not installed are skipped with a note (pip install -r
requirements-bench.txt for PyTorch). The 'ours' workers import no TensorFlow.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# name -> (worker implementation, dtype, memory_efficient)
VARIANTS = {
  'ours': ('ours', 'float32', False),
  'ours-me': ('ours', 'float32', True),
  'ours-bf16': ('ours', 'bfloat16', False),
  'ours-bf16-me': ('ours', 'bfloat16', True),
  'keras-tf': ('keras-tf', 'float32', False),
  'keras-jax': ('keras-jax', 'float32', False),
  'torch': ('torch', 'float32', False),
  'torch-me': ('torch', 'float32', True),
  'torch-bf16': ('torch', 'bfloat16', False),
  'baseline': ('ours', 'float32', False),  # --baseline PATH
}
CPU_CASES = (
  'densenet121@224x3:8',
  'densenet121@48x1:64',
  'fer_densenet@48x1:64',
  'densenet_bc_100_12@32x3:64',
)
GPU_CASES = ('densenet121@224x3:256', 'fer_densenet@48x1:512')
CPU_VARIANTS = (
  'ours',
  'ours-me',
  'ours-bf16',
  'keras-tf',
  'keras-jax',
  'torch',
)
GPU_VARIANTS = ('ours', 'ours-bf16', 'ours-bf16-me', 'torch-bf16')
NUM_CLASSES = {'imagenet': 1000, 'cifar': 10, 'fer': 7}


def parse_case(text: str) -> dict:
  """'densenet121@224x3:8' -> model, size, channels, batch."""
  model, rest = text.split('@')
  shape, batch = rest.split(':')
  size, channels = shape.split('x')
  from densenet_flax import models

  if model not in models.PRESETS:
    raise SystemExit(f'--cases: unknown model {model!r}')
  return {
    'model': model,
    'size': int(size),
    'channels': int(channels),
    'batch': int(batch),
    'num_classes': NUM_CLASSES[models.PRESETS[model]['stem']],
  }


def available(impl: str) -> str | None:
  """None if the worker can run, else why not."""
  needs = {
    'keras-tf': ('keras', 'tensorflow'),
    'keras-jax': ('keras',),
    'torch': ('torch',),
    'ours': ('jax', 'flax'),
  }[impl]
  missing = [m for m in needs if importlib.util.find_spec(m) is None]
  if missing:
    hint = (
      ' (pip install -r requirements-bench.txt)' if 'torch' in missing else ''
    )
    return f'{", ".join(missing)} not installed{hint}'
  return None


class Worker:
  """A step_worker subprocess speaking JSON lines."""

  def __init__(self, impl: str, pythonpath: str | None, log):
    env = dict(os.environ)
    # The worker runs outside the checkout, so that `pythonpath` (a baseline
    # checkout of densenet_flax) is what it imports, not the current directory.
    env['PYTHONPATH'] = os.pathsep.join(
      p for p in (pythonpath, REPO, env.get('PYTHONPATH')) if p
    )
    self.proc = subprocess.Popen(
      [sys.executable, '-m', 'benchmarks.step_worker', impl],
      cwd=tempfile.gettempdir(),
      env=env,
      stdin=subprocess.PIPE,
      stdout=subprocess.PIPE,
      stderr=log,
      text=True,
    )

  def ask(self, **cmd) -> dict:
    self.proc.stdin.write(json.dumps(cmd) + '\n')
    self.proc.stdin.flush()
    line = self.proc.stdout.readline()
    if not line:
      return {'ok': False, 'error': 'worker exited (see the worker log)'}
    return json.loads(line)

  def close(self):
    try:
      self.ask(op='exit')
    except (BrokenPipeError, ValueError):
      pass
    self.proc.wait(timeout=60)


def run_case(
  case: dict,
  variants: list[str],
  rounds: int,
  steps: int,
  baseline: str | None,
  log,
) -> dict:
  results, workers = {}, {}
  for name in variants:
    impl, dtype, memory_efficient = VARIANTS[name]
    reason = available(impl)
    if reason:
      results[name] = {'skipped': reason}
      continue
    worker = Worker(impl, baseline if name == 'baseline' else None, log)
    reply = worker.ask(
      op='setup', dtype=dtype, memory_efficient=memory_efficient, **case
    )
    if not reply.pop('ok'):
      results[name] = {'skipped': reply['error']}
      worker.close()
      continue
    results[name] = dict(reply, times=[])
    workers[name] = worker
    print(
      f'  {name}: ready ({reply["compile_s"]:.1f} s to compile/first step)',
      flush=True,
    )
  names = list(workers)
  for r in range(rounds):
    for name in names[r % len(names) :] + names[: r % len(names)]:
      reply = workers[name].ask(op='time', steps=steps)
      if reply.get('ok'):
        results[name]['times'] += reply['times']
  for name, worker in workers.items():
    reply = worker.ask(op='memory')
    reply.pop('ok', None)
    results[name]['memory'] = reply
    worker.close()
    times = results[name]['times']
    if times:
      median = statistics.median(times)
      results[name].update(
        median_s=median,
        min_s=min(times),
        max_s=max(times),
        images_per_s=case['batch'] / median,
      )
  ratios = {}
  ours = results.get('ours', {}).get('images_per_s')
  for name, result in results.items():
    if name != 'ours' and ours and result.get('images_per_s'):
      ratios[f'ours/{name}'] = ours / result['images_per_s']
  return {'case': case, 'results': results, 'ratios': ratios}


def machine() -> dict:
  info = {
    'machine': platform.machine(),
    'cores': os.cpu_count(),
    'python': platform.python_version(),
  }
  try:
    with open('/proc/cpuinfo') as f:
      info['cpu'] = next(
        line.split(':', 1)[1].strip()
        for line in f
        if line.startswith('model name')
      )
  except (OSError, StopIteration):
    info['cpu'] = platform.processor()
  return info


def backend_in_subprocess() -> tuple[str, str]:
  """(JAX's backend, its first device's kind), asked of a child process: a
  coordinator that started JAX itself would hold device memory (75% of a
  GPU's, by default) that its workers need."""
  out = subprocess.run(
    [
      sys.executable,
      '-c',
      'import jax; print(jax.default_backend()); '
      'print(jax.devices()[0].device_kind)',
    ],
    capture_output=True,
    text=True,
    check=True,
  )
  platform, device = out.stdout.strip().splitlines()[-2:]
  return platform, device


def _mb(n):
  return f'{n / 2**20:,.0f}' if n else '-'


def print_table(report: dict) -> None:
  for entry in report['cases']:
    c = entry['case']
    print(
      f'\n{c["model"]} @ {c["size"]}x{c["size"]}x{c["channels"]}, '
      f'batch {c["batch"]}'
    )
    print(
      f'  {"variant":<13} {"compile s":>9} {"step ms":>9} '
      f'{"min-max ms":>15} {"img/s":>8} {"ours/this":>9} '
      f'{"peak RSS MB":>11} {"XLA temp MB":>11} {"device MB":>9}'
    )
    for name, r in entry['results'].items():
      if 'skipped' in r:
        print(f'  {name:<13} skipped: {r["skipped"]}')
        continue
      if 'median_s' not in r:
        print(f'  {name:<13} no timings')
        continue
      ratio = entry['ratios'].get(f'ours/{name}')
      memory = r.get('memory', {})
      print(
        f'  {name:<13} {r["compile_s"]:9.1f} {1e3 * r["median_s"]:9.1f} '
        f'{1e3 * r["min_s"]:7.1f}-{1e3 * r["max_s"]:<7.1f} '
        f'{r["images_per_s"]:8.1f} '
        f'{(f"{ratio:.2f}" if ratio else "-"):>9} '
        f'{_mb(memory.get("peak_rss_bytes")):>11} '
        f'{_mb(r.get("xla_memory", {}).get("temp_size_in_bytes")):>11} '
        f'{_mb(memory.get("peak_bytes_in_use")):>9}'
      )


def markdown(report: dict) -> str:
  """The report as Markdown tables (for docs/benchmarks.md)."""
  lines = []
  for entry in report['cases']:
    c = entry['case']
    lines += [
      f'**{c["model"]} @ {c["size"]}x{c["size"]}x{c["channels"]}, '
      f'batch {c["batch"]}**',
      '',
      '| variant | compile s | step ms (min-max) | images/s | '
      'ours / this | peak RSS MB | XLA temp MB |',
      '|---|---|---|---|---|---|---|',
    ]
    for name, r in entry['results'].items():
      if 'median_s' not in r:
        lines.append(
          f'| {name} | skipped: {r.get("skipped", "no timings")} | | | | | |'
        )
        continue
      ratio = entry['ratios'].get(f'ours/{name}')
      lines.append(
        f'| {name} | {r["compile_s"]:.1f} | {1e3 * r["median_s"]:.0f} '
        f'({1e3 * r["min_s"]:.0f}-{1e3 * r["max_s"]:.0f}) | '
        f'{r["images_per_s"]:.1f} | {f"{ratio:.2f}" if ratio else "-"} | '
        f'{_mb(r.get("memory", {}).get("peak_rss_bytes"))} | '
        f'{_mb(r.get("xla_memory", {}).get("temp_size_in_bytes"))} |'
      )
    lines.append('')
  return '\n'.join(lines)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument(
    '--cases',
    nargs='*',
    default=None,
    help='model@SIZExCHANNELS:BATCH (default: by platform)',
  )
  parser.add_argument(
    '--variants', nargs='*', default=None, choices=sorted(VARIANTS)
  )
  parser.add_argument('--rounds', type=int, default=5)
  parser.add_argument(
    '--steps', type=int, default=3, help='timed steps per variant per round'
  )
  parser.add_argument(
    '--baseline',
    default=None,
    help="a checkout of densenet_flax to time as 'baseline'",
  )
  parser.add_argument('--json', default=None)
  parser.add_argument(
    '--markdown',
    default=None,
    help='also write the tables as Markdown to this file',
  )
  args = parser.parse_args(argv)

  platform, device = backend_in_subprocess()
  gpu = platform == 'gpu'
  cases = [
    parse_case(c) for c in (args.cases or (GPU_CASES if gpu else CPU_CASES))
  ]
  variants = list(args.variants or (GPU_VARIANTS if gpu else CPU_VARIANTS))
  if args.baseline and 'baseline' not in variants:
    variants.append('baseline')
  report = {
    'machine': machine(),
    'platform': platform,
    'device': device,
    'rounds': args.rounds,
    'steps_per_round': args.steps,
    'cases': [],
  }
  with tempfile.NamedTemporaryFile(
    'w', prefix='step_workers_', suffix='.log', delete=False
  ) as log:
    print(f'Worker logs: {log.name}')
    for case in cases:
      print(
        f'{case["model"]} @ {case["size"]}px x{case["channels"]}, batch '
        f'{case["batch"]}:',
        flush=True,
      )
      report['cases'].append(
        run_case(case, variants, args.rounds, args.steps, args.baseline, log)
      )
  print(f'\nMachine: {report["machine"]}; device: {report["device"]}')
  print_table(report)
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(report, f, indent=2)
    print(f'\nwrote {args.json}')
  if args.markdown:
    with open(args.markdown, 'w') as f:
      f.write(markdown(report))
    print(f'wrote {args.markdown}')


if __name__ == '__main__':
  main()
