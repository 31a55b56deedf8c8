"""benchmarks.tpu_compile: the run's train step compiled for TPU chips that
are not there, and the analytic FLOP count it is held against.

The second-tier test runs the benchmark with libtpu's compiler, which must
not be the backend of the Python running the tests: it takes the python of
a venv that has libtpu, $DENSENET_FLAX_TPU_PYTHON (.ci/run makes
.venv-tpu and sets it), and is skipped, saying so, without one.
"""

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import model_flops
from benchmarks import tpu_compile
from densenet_flax import models

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TPU_PYTHON_ENV = 'DENSENET_FLAX_TPU_PYTHON'
KEYS = (
  'topology',
  'devices',
  'model',
  'batch',
  'memory_efficient',
  'dtype',
  'compile_s',
  'temp_bytes',
  'argument_bytes',
  'output_bytes',
  'flops',
  'bytes_accessed',
  'fits',
  'roofline_step_s',
)


def test_conv_shapes_are_the_models_kernels():
  """The counter's convolutions are the model's, kernel for kernel."""
  for name, shape in [
    ('densenet121', (224, 224, 3)),
    ('densenet_bc_100_12', (32, 32, 1)),
    ('densenet_40_12', (32, 32, 3)),  # basic layers, no bottleneck
    ('fer_densenet', (48, 48, 1)),
  ]:
    model = models.create_model(name, num_classes=7)
    variables = jax.eval_shape(
      lambda model=model, shape=shape: model.init(
        jax.random.key(0), jnp.zeros((1, *shape)), train=False
      )
    )
    params = variables['params']
    for conv in model_flops.forward_convs(model, shape):
      node = params
      for part in conv.name.split('/'):
        node = node[part]
      kernel = node['kernel'].shape
      if conv.name == 'classifier':
        assert kernel == (conv.in_channels, conv.out_channels)
      else:
        assert kernel == (
          conv.kernel,
          conv.kernel,
          conv.in_channels,
          conv.out_channels,
        ), (name, conv.name)


def test_counted_taps_are_what_xla_counts_for_a_padded_strided_conv():
  """With padding_taps=False a convolution counts what XLA's own cost
  analysis counts for it (here XLA:CPU's)."""
  conv = model_flops.Conv('conv0', 30, 7, 2, 3, 3, 8, 3)

  def forward(x, k):
    return jax.lax.conv_general_dilated(
      x, k, (2, 2), ((3, 3), (3, 3)), dimension_numbers=('NHWC', 'HWIO', 'NHWC')
    )

  x = jax.ShapeDtypeStruct((1, 30, 30, 3), jnp.float32)
  k = jax.ShapeDtypeStruct((7, 7, 3, 8), jnp.float32)
  cost = jax.jit(forward).lower(x, k).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  assert conv.out_size == 15
  assert conv.flops(padding_taps=False) == cost['flops']
  assert conv.flops() == 2 * 15 * 15 * 49 * 3 * 8 > cost['flops']


def test_densenet121_forward_is_its_published_size():
  """torchvision lists 2.83 GFLOPS (multiply-adds of its convolutions and
  classifier) for DenseNet-121 at 224 px; padding taps included, as here."""
  model = models.create_model('densenet121', num_classes=1000)
  macs = sum(
    c.flops() for c in model_flops.forward_convs(model, (224,) * 2 + (3,))
  )
  assert 2.80e9 < macs / 2 < 2.90e9


def test_memory_efficient_count_adds_padding_and_the_recomputed_1x1():
  plain = models.create_model(
    'densenet_bc_100_12', num_classes=10, block_sizes=(6, 6, 6)
  )
  efficient = plain.clone(memory_efficient=True)
  shape = (32, 32, 1)
  one = model_flops.train_step_flops(plain, shape, 1)
  assert model_flops.train_step_flops(plain, shape, 16) == 16 * one
  # Loops count once only in the memory-efficient program.
  assert model_flops.train_step_flops(plain, shape, 1, True) == one
  convs = model_flops.forward_convs(plain, shape)
  extra = 0
  for conv in convs:
    if conv.name.startswith('denseblock') and conv.name.endswith('conv1'):
      own = conv.flops()
      padded = conv.flops(read_channels=True)
      extra += 3 * (padded - own) + padded  # wider, and recomputed
  assert model_flops.train_step_flops(efficient, shape, 1) == one + extra
  # One loop of 6 layers per block: the first layer's convs, 4 + 3 passes.
  once = model_flops.train_step_flops(efficient, shape, 1, True)
  assert once < model_flops.train_step_flops(efficient, shape, 1) / 3


def test_bad_targets_name_the_flag():
  with pytest.raises(ValueError, match='--topology'):
    tpu_compile.parse_target('tpu', 'v9x:2x2', None)
  with pytest.raises(ValueError, match='--topology'):
    tpu_compile.parse_target('tpu', None, None)
  with pytest.raises(ValueError, match='--target'):
    tpu_compile.parse_target('rocm:mi300', None, 4)
  with pytest.raises(ValueError, match='--gpu-target-config'):
    tpu_compile.parse_target('cuda:h100', None, 4)
  target = tpu_compile.parse_target('tpu', 'v4:2x2x1', None)
  assert (target.chip, target.num_chips) == ('v4', 4)


def test_a_missing_libtpu_says_how_to_install_it_apart():
  try:
    import libtpu  # noqa: F401

    pytest.skip("libtpu is installed in this Python: nothing's missing")
  except ImportError:
    pass
  with pytest.raises(tpu_compile.MissingCompiler) as raised:
    tpu_compile.check_compiler('tpu')
  message = str(raised.value)
  assert 'libtpu is not installed' in message
  assert f'jax[tpu]=={jax.__version__}' in message
  assert 'python -m venv --system-site-packages' in message


ABSTRACT_CHILD = textwrap.dedent(
  """
  import json, sys
  import jax, numpy as np
  from benchmarks import tpu_compile
  from densenet_flax import config_keys, layers, training

  config = config_keys.base_config()
  config.model_overrides.block_sizes = (1, 1)
  config.model_overrides.growth_rate = 4
  config.image_size, config.channels, config.batch_size = 8, 1, 8
  results = {}
  for parallelism in ('shard_map', 'pmap'):
    config.parallelism = parallelism
    run = tpu_compile.run_step(config, jax.devices(), 'cpu')
    dp = run.dp
    with layers.use_kernels('generic'):  # as the benchmark traces
      compiled = run.step.lower(*run.arguments).compile()
    # The run's arguments, placed as the run places them.
    rng = np.random.default_rng(0)
    batch = dp.put_batch({
      'image': rng.random((dp.num_local_devices, 4, 8, 8, 1), np.float32),
      'label': rng.integers(0, 10, (dp.num_local_devices, 4), np.int32),
    })
    key = dp.put_broadcast(training.run_keys(config)[1])
    with layers.use_kernels('generic'):
      expected = run.step(dp.put_replicated(run.make_state()), batch, key)
    # A CompiledStep's lowering takes the broadcast arguments as one tuple.
    got = compiled(dp.put_replicated(run.make_state()), batch, (key,))
    got, expected = jax.device_get(
      (dp.first_replica(got[1]), dp.first_replica(expected[1]))
    )
    results[parallelism] = {
      k: [float(got[k]), float(expected[k])] for k in got
    }
  print(json.dumps(results))
  """
)


def test_the_abstract_arguments_are_the_runs():
  """What the benchmark compiles from shapes alone takes the state, batch
  and key the run places on the devices (2 fake CPU devices here, shard_map
  and pmap), and computes what the run's step computes."""
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  env['XLA_FLAGS'] = (
    env.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=2'
  )
  done = subprocess.run(
    [sys.executable, '-c', ABSTRACT_CHILD],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert done.returncode == 0, done.stderr[-3000:]
  results = json.loads(done.stdout.strip().splitlines()[-1])
  assert set(results) == {'shard_map', 'pmap'}
  for metrics in results.values():
    assert {'loss', 'accuracy'} <= set(metrics)
    for got, expected in metrics.values():
      np.testing.assert_allclose(got, expected, rtol=1e-6)


def tpu_python() -> str:
  """The python of a venv with libtpu, or a skip that says how to get one."""
  python = os.environ.get(TPU_PYTHON_ENV) or os.path.join(
    REPO, '.venv-tpu', 'bin', 'python'
  )
  if not os.path.exists(python):
    pytest.skip(
      f'no Python with libtpu: set {TPU_PYTHON_ENV} to the python of a '
      f'venv made by {tpu_compile.install_hint("tpu")}'
    )
  found = subprocess.run(
    [
      python,
      '-c',
      'import importlib.util as u; print(bool(u.find_spec("libtpu")))',
    ],
    capture_output=True,
    text=True,
  )
  if found.stdout.strip() != 'True':
    pytest.skip(f'{python} has no libtpu: {tpu_compile.install_hint("tpu")}')
  return python


def run_benchmark(python: str, *args: str) -> subprocess.CompletedProcess:
  env = dict(os.environ)
  # The tests' XLA:CPU flags and compilation cache are not the TPU's.
  for name in ('XLA_FLAGS', 'JAX_COMPILATION_CACHE_DIR'):
    env.pop(name, None)
  env['JAX_PLATFORMS'] = 'cpu'
  return subprocess.run(
    [python, '-m', 'benchmarks.tpu_compile', *args],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=1500,
  )


@pytest.mark.slow
def test_a_step_too_big_for_the_chip_is_a_row_that_does_not_fit():
  """libtpu refuses a program larger than the chip's HBM: the row says so,
  with the compiler's words, and the benchmark goes on."""
  done = run_benchmark(
    tpu_python(),
    '--topology',
    'v5e:1x1',
    '--model',
    'densenet_bc_100_12',
    '--block-sizes',
    '1,1',
    '--image-size',
    '32',
    '--channels',
    '1',
    '--batch',
    '65536',
    '2',
  )
  assert done.returncode == 0, done.stderr[-3000:]
  big, small = (json.loads(line) for line in done.stdout.splitlines())
  assert big['batch'] == 65536 and not big['fits']
  assert 'Ran out of memory on HBM' in big['compile_error']
  assert big['temp_bytes'] is None and big['roofline_step_s'] is None
  assert small['batch'] == 2 and small['fits'] and 'compile_error' not in small


@pytest.mark.slow
def test_densenet_bc_train_step_compiles_for_a_v5e_pod_slice():
  """DenseNet-BC (blocks of 6, 32 px, bf16, 16 per chip) for 4 v5e chips:
  both modes compile, the memory-efficient one holds less, and XLA:TPU's
  FLOPs are the analytic count's.

  XLA counts each convolution's multiply-adds that read the input (not
  the padding taps) plus the elementwise work (BN, ReLU, pooling, the
  optimizer), which the convolutions' count leaves out: its FLOPs lie
  between the count without padding taps and 10% above the count with
  them. It counts a while loop's body once, so for the memory-efficient
  blocks (one loop of 6 layers each) it matches the count of one layer per
  loop, a fraction of the work the loops do.
  """
  done = run_benchmark(
    tpu_python(),
    '--topology',
    'v5e:2x2',
    '--model',
    'densenet_bc_100_12',
    '--block-sizes',
    '6,6,6',
    '--image-size',
    '32',
    '--channels',
    '1',
    '--batch',
    '16',
    '--modes',
    'plain',
    'memory_efficient',
    '--dtype',
    'bfloat16',
  )
  assert done.returncode == 0, done.stderr[-3000:]
  # libtpu's complaints about a host without TPU VM settings stay out.
  assert 'TPU_WORKER_HOSTNAMES' not in done.stderr, done.stderr[-3000:]
  assert 'TPU_ACCELERATOR_TYPE' not in done.stderr, done.stderr[-3000:]
  plain, efficient = (json.loads(line) for line in done.stdout.splitlines())
  for row in (plain, efficient):
    assert set(KEYS) <= set(row)
    assert (row['topology'], row['devices'], row['chip']) == (
      'v5e:2x2',
      4,
      'TPU v5e',
    )
    assert (row['batch'], row['dtype']) == (16, 'bfloat16')
    assert row['fits'] and 0 < row['peak_bytes'] < 16 * 2**30
    assert 'estimate' in row['roofline_note']
  assert not plain['memory_efficient'] and efficient['memory_efficient']
  # The same state and batch go in.
  assert plain['argument_bytes'] == efficient['argument_bytes']
  assert efficient['temp_bytes'] < plain['temp_bytes']
  assert efficient['peak_bytes'] < plain['peak_bytes']

  model = models.create_model(
    'densenet_bc_100_12', num_classes=10, block_sizes=(6, 6, 6)
  )
  shape = (32, 32, 1)
  for row, net in (
    (plain, model),
    (efficient, model.clone(memory_efficient=True)),
  ):
    inside = model_flops.train_step_flops(
      net, shape, 16, loop_bodies_once=True, padding_taps=False
    )
    counted = model_flops.train_step_flops(
      net, shape, 16, loop_bodies_once=True
    )
    assert inside <= row['flops'] <= 1.10 * counted, (row['flops'], counted)
  work = model_flops.train_step_flops(
    model.clone(memory_efficient=True), shape, 16
  )
  assert efficient['flops'] < work / 3
  assert efficient['analytic_flops'] == work
  # The roofline's compute term takes the whole work, not XLA's loop count.
  chip = tpu_compile.CHIPS['v5e']
  assert efficient['roofline_step_s'] >= work / chip.peak_flops
