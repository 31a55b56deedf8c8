"""The train step compiled for TPU (or CUDA) chips this host does not have.

  python -m benchmarks.tpu_compile --topology v5e:2x2 --model densenet_bc_100_12
      [--config configs/x.py] [--block-sizes 6,6,6] [--image-size 32]
      [--channels 1] [--batch 16 64] [--memory-efficient | --modes plain
      memory_efficient] [--dtype bfloat16|float16|float32]
      [--parallelism shard_map|pmap]
  python -m benchmarks.tpu_compile --target cuda:h100 --devices 4
      --gpu-target-config h100_sxm.txtpb ...

JAX compiles for an abstract device topology without the devices
(`jax.experimental.topologies`): for TPU with libtpu's compiler, for CUDA
with the CUDA plugin's and XLA's description of the GPU
(xla/backends/gpu/target_config/specs/h100_sxm.txtpb in openxla/xla, which
--gpu-target-config reads). Neither compiler may be a backend of the Python
that runs the tests: install it in a venv of its own (`install_hint`) and
run this module with that venv's python. The host's backend stays the CPU
(JAX_PLATFORMS=cpu); nothing runs on the target.

Each case is the run's own train step: `training.compile_train_step` over a
`parallel.DataParallel` of the topology's devices (shard_map by default; the
pmap path compiles too), the state donated, the model, optimizer and dtype
policy of the config (--config, default `config.base_config()`, with the
flags' overrides), the generic kernels (those GPUs and TPUs run), and only
abstract arguments: `jax.eval_shape` of the run's fresh state, replicated,
and a global [devices, per-chip batch, ...] batch split over the devices,
as the run places them (`run_step`). One JSON line per case, per device
(one device per chip):

  topology, chip, devices, model, batch (per chip), memory_efficient, dtype
  lower_s                 tracing and lowering
  compile_s, compile_cpu_s  the compiler's wall and CPU seconds
  argument_bytes, output_bytes, alias_bytes, temp_bytes, peak_bytes
                          XLA's memory analysis
  fits                    peak_bytes within the chip's HBM (`_memory` says
                          why the peak and not the temp size)
  compile_error           where libtpu refused the program for want of HBM
                          (fits false, no memory or cost figures)
  flops, bytes_accessed   XLA's cost analysis (flops_source 'xla'); CUDA's
                          compiler gives none: flops is then analytic_flops
                          and bytes_accessed null ('analytic')
  analytic_flops          benchmarks.model_flops' count of the convolutions
  analytic_flops_loops_once  the same, each memory-efficient loop's body
                          counted once, as XLA's cost analysis counts it
  roofline_step_s         an ESTIMATE, not a measurement: max(FLOPs / peak,
                          bytes_accessed / bandwidth) with the chip's
                          published bf16 peak and HBM bandwidth (CHIPS),
                          FLOPs the larger of flops and analytic_flops
                          (roofline_note says so in each row)

Imports no TensorFlow.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import importlib.util
import json
import os
import re
import sys
import threading
import time
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODES = ('plain', 'memory_efficient')
DTYPES = ('bfloat16', 'float16', 'float32')
# A nominal epoch length: only the learning-rate schedule's constants
# depend on it, not the program's shapes or operations.
STEPS_PER_EPOCH = 1000


@dataclasses.dataclass(frozen=True)
class Chip:
  """Published per-chip figures (bf16 dense peak, HBM size and bandwidth)."""

  name: str
  hbm_bytes: int
  peak_flops: float
  hbm_bytes_per_s: float
  source: str


GiB = 2**30
CHIPS = {
  'v4': Chip(
    'TPU v4',
    32 * GiB,
    275e12,
    1200e9,
    'https://cloud.google.com/tpu/docs/v4',
  ),
  'v5e': Chip(
    'TPU v5e',
    16 * GiB,
    197e12,
    819e9,
    'https://cloud.google.com/tpu/docs/v5e',
  ),
  'v5p': Chip(
    'TPU v5p',
    95 * GiB,
    459e12,
    2765e9,
    'https://cloud.google.com/tpu/docs/v5p',
  ),
  'v6e': Chip(
    'TPU v6e',
    32 * GiB,
    918e12,
    1640e9,
    'https://cloud.google.com/tpu/docs/v6e',
  ),
  'h100': Chip(
    'NVIDIA H100 SXM',
    80 * 10**9,
    989e12,
    3.35e12,
    'https://www.nvidia.com/en-us/data-center/h100/',
  ),
}
TPU_CHIPS = ('v4', 'v5e', 'v5p', 'v6e')
# libtpu asks for the TPU VM's accelerator type and worker hosts, and logs
# errors without them; the compile does not depend on them.
TPU_ACCELERATOR_TYPES = {
  'v4': 'v4-8',
  'v5e': 'v5litepod-4',
  'v5p': 'v5p-8',
  'v6e': 'v6e-4',
}
# GPU targets: the chip, and where XLA keeps its description (a
# GpuTargetConfigProto in text form, openxla/xla, Apache-2.0), which
# --gpu-target-config reads; XLA's own tests compile against these files.
CUDA_TARGETS = {'h100': 'xla/backends/gpu/target_config/specs/h100_sxm.txtpb'}
# GpuDeviceInfoProto fields newer than some jaxlibs (0.10's does not know
# them): dropped, with a note, when the description does not parse whole.
NEWER_GPU_FIELDS = ('collective_memory_granularity',)
# C++ log lines that say nothing about the compile: the CUDA plugin looks
# for a driver, absl notes it was not initialised, a text-format parser
# names a field this jaxlib does not know (NEWER_GPU_FIELDS).
NOISE = (
  re.compile(r'All log messages before absl::InitializeLog'),
  re.compile(r'cudart_stub\.cc:\d+\] Could not find cuda drivers'),
  re.compile(r'text_format\.cc:\d+\] Error parsing text-format '),
)


class MissingCompiler(RuntimeError):
  """The accelerator's compiler is not installed in this Python."""


def install_hint(target: str) -> str:
  """How to install the compiler of `target` ('tpu' or 'cuda') in a venv of
  its own, next to this Python's packages and with its jax version."""
  try:
    version = importlib.metadata.version('jax')
  except importlib.metadata.PackageNotFoundError:
    version = '<jax version>'
  if target == 'tpu':
    packages = f'"jax[tpu]=={version}"'
  else:
    packages = f'"jax-cuda12-plugin=={version}" "jax-cuda12-pjrt=={version}"'
  venv = '.venv-tpu' if target == 'tpu' else '.venv-cuda'
  return (
    f'python -m venv --system-site-packages {venv} && '
    f'{venv}/bin/pip install {packages}; then run '
    f'{venv}/bin/python -m benchmarks.tpu_compile ... (a venv of its own '
    f"keeps this Python's JAX backend on the CPU)"
  )


def check_compiler(target: str) -> None:
  """Raises MissingCompiler, saying how to install it, when absent."""
  module = 'libtpu' if target == 'tpu' else 'jax_plugins.xla_cuda12'
  try:
    found = importlib.util.find_spec(module) is not None
  except ModuleNotFoundError:
    found = False
  if not found:
    what = 'libtpu' if target == 'tpu' else "JAX's CUDA plugin"
    raise MissingCompiler(
      f'{what} is not installed in {sys.executable}, so nothing can '
      f'compile for {target}. Install it apart: {install_hint(target)}'
    )


@dataclasses.dataclass(frozen=True)
class Target:
  """Where the step is compiled for: platform, chip and device layout."""

  platform: str  # 'tpu' or 'cuda'
  chip: str  # a key of CHIPS
  topology: str  # 'v5e:2x2', or '1x1x4' (slices x hosts x GPUs) for CUDA
  gpu_target_config: str = ''  # CUDA: a GpuTargetConfigProto text file

  @property
  def num_chips(self) -> int:
    layout = self.topology.split(':')[-1]
    count = 1
    for size in layout.split('x'):
      count *= int(size)
    return count


def parse_target(
  target: str,
  topology: str | None,
  devices: int | None,
  gpu_target_config: str | None = None,
):
  """Target of --target, --topology, --devices and --gpu-target-config;
  ValueError naming the flag."""
  if target == 'tpu':
    if not topology or ':' not in topology:
      raise ValueError(
        f'--topology={topology!r}: expected CHIP:LAYOUT with CHIP one of '
        f'{", ".join(TPU_CHIPS)}, e.g. v5e:2x2 or v4:2x2x1'
      )
    chip = topology.split(':')[0]
    if chip not in TPU_CHIPS:
      raise ValueError(
        f'--topology={topology!r}: unknown chip {chip!r}; expected one '
        f'of {", ".join(TPU_CHIPS)}'
      )
    result = Target('tpu', chip, topology)
  elif target.startswith('cuda:'):
    chip = target.split(':', 1)[1]
    if chip not in CUDA_TARGETS:
      raise ValueError(
        f'--target={target!r}: expected cuda:GPU with GPU one of '
        f'{", ".join(CUDA_TARGETS)}'
      )
    if topology and devices:
      raise ValueError('--topology and --devices: give one of them')
    if not gpu_target_config:
      raise ValueError(
        f'--target={target}: needs --gpu-target-config, the path of '
        f"XLA's {CUDA_TARGETS[chip]} (from github.com/openxla/xla)"
      )
    if not os.path.isfile(gpu_target_config):
      raise ValueError(
        f'--gpu-target-config={gpu_target_config!r}: no such file; '
        f"expected XLA's {CUDA_TARGETS[chip]}"
      )
    result = Target(
      'cuda', chip, topology or f'1x1x{devices or 1}', gpu_target_config
    )
  else:
    raise ValueError(
      f'--target={target!r}: expected tpu or cuda:GPU '
      f'({", ".join("cuda:" + g for g in CUDA_TARGETS)})'
    )
  try:
    result.num_chips
  except ValueError:
    raise ValueError(
      f'--topology={result.topology!r}: expected sizes joined by x, '
      f'e.g. 2x2 or 1x1x4'
    ) from None
  return result


def topology_devices(target: Target) -> list:
  """The abstract devices of `target`, one per chip, ready to compile for.

  TPU v4 is asked for in megacore mode, one device per chip as a v4 VM
  shows it (otherwise each TensorCore is a device).
  """
  from jax.experimental import topologies

  check_compiler(target.platform)
  if target.platform == 'cuda':
    devices = _cuda_devices(target)
  else:
    os.environ.setdefault(
      'TPU_ACCELERATOR_TYPE', TPU_ACCELERATOR_TYPES[target.chip]
    )
    os.environ.setdefault('TPU_WORKER_HOSTNAMES', 'localhost')
    # libtpu's lockfile keeps two processes off one host's chips; nothing
    # runs on a chip here, and compiles may run side by side.
    os.environ.setdefault('ALLOW_MULTIPLE_LIBTPU_LOAD', '1')
    kwargs = {}
    if target.chip == 'v4':
      kwargs['chip_config_name'] = 'megacore'
    if target.num_chips < 4:
      # Smaller than one host's chips: a host of exactly this layout.
      layout = [int(s) for s in target.topology.split(':')[1].split('x')]
      kwargs['chips_per_host_bounds'] = tuple(layout + [1] * (3 - len(layout)))
    devices = topologies.get_topology_desc(
      topology_name=target.topology, platform='tpu', **kwargs
    ).devices
  if len(devices) != target.num_chips:
    raise ValueError(
      f'{target.topology}: {len(devices)} devices for {target.num_chips} '
      f'chips; the figures are per chip, so one device per chip is needed'
    )
  return devices


def _cuda_devices(target: Target) -> list:
  """The GPUs of `target`'s description, which may name fields this jaxlib
  does not know (NEWER_GPU_FIELDS: dropped, with a note)."""
  from jax.experimental import topologies

  with open(target.gpu_target_config) as f:
    spec = f.read()

  def devices(text):
    return topologies.get_topology_desc(
      platform='cuda', target_config=text, topology=target.topology
    ).devices

  try:
    return devices(spec)
  except Exception as e:  # jaxlib raises its own error type
    lines = spec.splitlines()
    kept = [
      line
      for line in lines
      if line.split(':')[0].strip() not in NEWER_GPU_FIELDS
    ]
    if len(kept) == len(lines):
      raise ValueError(
        f'--gpu-target-config={target.gpu_target_config!r} does not parse '
        f'as a GpuTargetConfigProto: {e}'
      ) from e
    found = devices('\n'.join(kept))
    print(
      f'note: {target.gpu_target_config}: without {", ".join(NEWER_GPU_FIELDS)}'
      f', which this jaxlib does not know',
      file=sys.stderr,
    )
    return found


class quiet_stderr:
  """Drops NOISE lines that C++ writes to file descriptor 2 (where Python's
  filters do not reach); every other line goes through."""

  def __enter__(self):
    sys.stderr.flush()
    self._saved = os.dup(2)
    read, write = os.pipe()
    os.dup2(write, 2)
    os.close(write)
    self._thread = threading.Thread(target=self._pump, args=(read,))
    self._thread.start()
    return self

  def _pump(self, read: int) -> None:
    with os.fdopen(read, 'rb') as pipe:
      for line in pipe:
        text = line.decode(errors='replace')
        if not any(pattern.search(text) for pattern in NOISE):
          os.write(self._saved, line)

  def __exit__(self, *exc):
    sys.stderr.flush()
    os.dup2(self._saved, 2)  # closes the pipe's last writer
    self._thread.join()
    os.close(self._saved)
    return False


def case_config(args, mode: str, batch: int | None, num_devices: int):
  """The run's config of one case: --config with the flags' overrides;
  `batch` per device (None: the config's global batch, over the devices)."""
  from densenet_flax import config_keys
  from densenet_flax import config_checks

  if args.config:
    config = config_keys.load_config_file(args.config)
  else:
    config = config_keys.base_config()
  if args.model:
    config.model = args.model
  if args.block_sizes:
    config.model_overrides.block_sizes = tuple(args.block_sizes)
  if args.image_size:
    config.image_size = args.image_size
  if args.channels:
    config.channels = args.channels
  if args.dtype:
    config.half_precision = args.dtype != 'float32'
    if config.half_precision:
      config.half_precision_dtype = args.dtype
  config.memory_efficient = mode == 'memory_efficient'
  config.parallelism = args.parallelism
  if batch is not None:
    config.batch_size = batch * num_devices
  config_checks.validate(config)
  if config.batch_size % num_devices:
    raise ValueError(
      f'config.batch_size={config.batch_size}: expected a multiple of the '
      f'{num_devices} devices (or give --batch per chip)'
    )
  return config


@dataclasses.dataclass
class RunStep:
  """The run's train step over some devices, and its arguments as shapes."""

  model: Any
  dp: Any  # parallel.DataParallel
  step: Any  # parallel.CompiledStep
  make_state: Any  # training.state_factory's: the fresh state
  arguments: tuple  # (state, batch, key) as jax.ShapeDtypeStructs


def run_step(config, devices, backend: str) -> RunStep:
  """The config's train step as training.py builds it, over `devices`.

  `backend` ('tpu', 'gpu', 'cpu') decides the 'auto' loss scaling. The
  arguments are those of a step on one global batch: the replicated state,
  the batch split over the devices, the run's step key.
  """
  import jax
  import jax.numpy as jnp
  import numpy as np

  from densenet_flax import optim
  from densenet_flax import parallel
  from densenet_flax import training
  from densenet_flax import recipe

  dp = parallel.DataParallel(devices=devices, parallelism=config.parallelism)
  num_classes = recipe.num_classes(config)
  model = recipe.build_model(config, dp.axis_name)
  tx, _ = optim.create_optimizer(config, STEPS_PER_EPOCH)
  # Balanced class weights come from the data's label counts: equal ones
  # here, the same program with other constants.
  weights = (
    np.ones(num_classes, np.float32)
    if config.class_weighting == 'balanced'
    else None
  )
  step = training.compile_train_step(config, dp, num_classes, weights)
  make_state = training.state_factory(config, model, tx, backend)
  state = dp.abstract_global(jax.eval_shape(make_state))
  per_device = config.batch_size // dp.num_devices
  shape = (dp.num_local_devices, per_device)
  host_batch = {
    'image': jax.ShapeDtypeStruct(
      (*shape, *recipe.input_shape(config)), jnp.float32
    ),
    'label': jax.ShapeDtypeStruct(shape, jnp.int32),
  }
  if config.label_mode != 'majority':
    host_batch['target'] = jax.ShapeDtypeStruct(
      (*shape, num_classes), jnp.float32
    )
  batch = dp.abstract_batch(host_batch)
  key = dp.abstract_broadcast(training.run_keys(config)[1])
  return RunStep(model, dp, step, make_state, (state, batch, key))


def _cost(compiled) -> dict:
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):  # older jax: one dict per program
    cost = cost[0] if cost else None
  return cost or {}


def _versions() -> dict:
  import jax

  versions = {'jax': jax.__version__}
  for package in ('libtpu', 'jax-cuda12-plugin'):
    try:
      versions[package] = importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
      pass
  return versions


def out_of_memory(error: Exception) -> bool:
  """Whether a compile failed because the program does not fit the chip
  (libtpu refuses such programs: 'RESOURCE_EXHAUSTED: Ran out of memory
  on HBM ...')."""
  return 'RESOURCE_EXHAUSTED' in str(error)


def measure(target: Target, config, devices, batch: int) -> dict:
  """One case's JSON row.

  A compile that the compiler refuses for want of memory gives a row too:
  fits false, its message as compile_error, and no memory or cost figures.
  """
  from benchmarks import model_flops
  from densenet_flax import layers
  from densenet_flax import recipe

  chip = CHIPS[target.chip]
  backend = 'gpu' if target.platform == 'cuda' else 'tpu'
  run = run_step(config, devices, backend)
  model = run.model
  shape = recipe.input_shape(config)
  analytic = model_flops.train_step_flops(model, shape, batch)
  row = {
    'topology': target.topology,
    'target': target.platform,
    'chip': chip.name,
    'devices': len(devices),
    'model': config.model,
    'block_sizes': list(model.block_sizes),
    'image_size': config.image_size,
    'channels': config.channels,
    'batch': batch,
    'memory_efficient': bool(config.memory_efficient),
    'dtype': str(recipe.compute_dtype(config).dtype),
    'parallelism': run.dp.parallelism,  # 'jit' on one device
    'hbm_bytes': chip.hbm_bytes,
    'analytic_flops': float(analytic),
    'analytic_flops_loops_once': float(
      model_flops.train_step_flops(model, shape, batch, loop_bodies_once=True)
    ),
    **_versions(),
  }
  start = time.perf_counter()
  with layers.use_kernels('generic'):
    lowered = run.step.lower(*run.arguments)
  row['lower_s'] = round(time.perf_counter() - start, 2)
  start, cpu = time.perf_counter(), time.process_time()
  try:
    compiled = lowered.compile()
  except Exception as e:  # jaxlib raises its own error type
    if not out_of_memory(e):
      raise
    compiled, error = None, str(e).strip().splitlines()[0]
  row['compile_s'] = round(time.perf_counter() - start, 2)
  row['compile_cpu_s'] = round(time.process_time() - cpu, 2)
  if compiled is None:
    return dict(
      row,
      fits=False,
      compile_error=error,
      **dict.fromkeys(MEMORY_KEYS + COST_KEYS),
    )
  return dict(
    row,
    **_memory(compiled, chip),
    **_roofline(compiled, chip, analytic, config.memory_efficient),
  )


MEMORY_KEYS = (
  'argument_bytes',
  'output_bytes',
  'alias_bytes',
  'temp_bytes',
  'peak_bytes',
)
COST_KEYS = (
  'flops',
  'flops_source',
  'bytes_accessed',
  'roofline_step_s',
  'roofline_bound',
  'roofline_note',
)


def _memory(compiled, chip: Chip) -> dict:
  """XLA's memory analysis; fits: the peak within the chip's HBM.

  On TPU the temp size is no bound in either direction: 0 or far below the
  peak for some programs, above it (and above the chip's HBM, for a program
  libtpu accepted) for others. The peak is what tracks libtpu's own check.
  Without a peak (older jaxlibs), arguments + outputs not aliased + temp.
  """
  memory = compiled.memory_analysis()
  peak = int(getattr(memory, 'peak_memory_in_bytes', 0) or 0) or int(
    memory.argument_size_in_bytes
    + memory.output_size_in_bytes
    - memory.alias_size_in_bytes
    + memory.temp_size_in_bytes
  )
  return {
    'argument_bytes': int(memory.argument_size_in_bytes),
    'output_bytes': int(memory.output_size_in_bytes),
    'alias_bytes': int(memory.alias_size_in_bytes),
    'temp_bytes': int(memory.temp_size_in_bytes),
    'peak_bytes': peak,
    'fits': peak <= chip.hbm_bytes,
  }


def _roofline(compiled, chip: Chip, analytic: int, loops: bool) -> dict:
  """XLA's FLOPs and bytes (or the analytic FLOPs where the compiler has no
  cost analysis) and the roofline estimate from them."""
  cost = _cost(compiled)
  if 'flops' in cost:
    flops, source = float(cost['flops']), 'xla'
    accessed = float(cost.get('bytes accessed', 0.0)) or None
  else:
    flops, source, accessed = float(analytic), 'analytic', None
  # XLA's cost analysis counts a while loop's body once: for the
  # memory-efficient blocks the analytic count of all their layers is the
  # compute term, and XLA's bytes a lower bound.
  compute_s = max(flops, float(analytic)) / chip.peak_flops
  memory_s = accessed / chip.hbm_bytes_per_s if accessed else 0.0
  if not accessed:
    bound = 'compute only (no byte count): a lower bound'
  else:
    bound = 'compute' if compute_s >= memory_s else 'memory'
  return {
    'flops': flops,
    'flops_source': source,
    'bytes_accessed': accessed,
    'roofline_step_s': max(compute_s, memory_s),
    'roofline_bound': bound,
    'roofline_note': (
      f'an estimate, not a measurement: max(max(flops, analytic_flops) / '
      f'{chip.peak_flops:.4g}, bytes_accessed / {chip.hbm_bytes_per_s:.4g}) '
      f'with the {chip.name} published bf16 peak and HBM bandwidth '
      f'({chip.source})'
      + ('' if accessed else '; bytes unknown, so compute only')
      + (
        '; XLA counts each loop body once, so the bytes term is a lower bound'
        if loops and accessed
        else ''
      )
    ),
  }


def _block_sizes(text: str) -> list[int]:
  try:
    sizes = [int(s) for s in text.split(',')]
  except ValueError:
    sizes = []
  if not sizes or min(sizes) < 1:
    raise argparse.ArgumentTypeError(
      f'{text!r}: expected dense layers per block joined by commas, e.g. 6,6,6'
    )
  return sizes


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument(
    '--target', default='tpu', help="'tpu' (default) or cuda:h100"
  )
  parser.add_argument(
    '--topology',
    help='TPU: CHIP:LAYOUT (v5e:2x2, v4:2x2x1, v5p:2x2x1, v6e:2x2); '
    'CUDA: SLICESxHOSTSxGPUS (1x1x4)',
  )
  parser.add_argument('--devices', type=int, help='CUDA: GPUs on one host')
  parser.add_argument(
    '--gpu-target-config',
    help=f"CUDA: XLA's description of the GPU ({CUDA_TARGETS['h100']})",
  )
  parser.add_argument(
    '--config', help='a config file (default: config.base_config())'
  )
  parser.add_argument('--model', help='a models preset (default: the config)')
  parser.add_argument('--block-sizes', type=_block_sizes)
  parser.add_argument('--image-size', type=int)
  parser.add_argument('--channels', type=int)
  parser.add_argument(
    '--batch',
    type=int,
    nargs='+',
    help='examples per chip, one case each (default: the config batch '
    'size over the devices)',
  )
  modes = parser.add_mutually_exclusive_group()
  modes.add_argument(
    '--memory-efficient',
    action='store_const',
    const=['memory_efficient'],
    dest='modes',
  )
  modes.add_argument('--modes', nargs='+', choices=MODES)
  parser.add_argument(
    '--dtype', choices=DTYPES, help='compute dtype (default: the config)'
  )
  parser.add_argument(
    '--parallelism', choices=('shard_map', 'pmap'), default='shard_map'
  )
  args = parser.parse_args(argv)
  try:
    args.parsed_target = parse_target(
      args.target, args.topology, args.devices, args.gpu_target_config
    )
  except ValueError as e:
    parser.error(str(e))
  args.modes = args.modes or ['plain']
  return args


def main(argv=None) -> None:
  args = parse_args(argv)
  # The host's backend stays the CPU: the target is compiled for, not run.
  os.environ.setdefault('JAX_PLATFORMS', 'cpu')
  target = args.parsed_target
  with quiet_stderr():  # from JAX's import on, which loads the plugins
    import jax

    # Compile times are measured: no persistent cache answers for XLA.
    jax.config.update('jax_enable_compilation_cache', False)
    try:
      devices = topology_devices(target)
    except MissingCompiler as e:
      sys.exit(str(e))
    for mode in args.modes:
      for batch in args.batch or [None]:
        config = case_config(args, mode, batch, len(devices))
        per_device = config.batch_size // len(devices)
        row = measure(target, config, devices, per_device)
        print(json.dumps(row), flush=True)


if __name__ == '__main__':
  main()
