"""benchmarks/step_profile.py: how it reads a trace and the program's names."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import step_profile
from densenet_flax import shared_buffer


def test_layer_free_names_add_up_over_layers():
  assert step_profile.layer_free(
    'jit(train_step)/transpose(jvp(DenseNet))/denseblock2/denselayer13/'
    'norm1/reduce_sum'
  ) == ('transpose(jvp(DenseNet))/denseblock*/denselayer*/norm1/reduce_sum')
  assert step_profile.layer_free(
    'jit(train_step)/jvp(DenseNet)/transition3/Dropout_0/div'
  ) == ('jvp(DenseNet)/transition*/Dropout_*/div')


def test_traced_kernels_are_attributed_to_their_op_names(tmp_path):
  """On this jax and backend the trace names its kernel events after the
  optimised program's instructions: each named scope gets time."""
  if jax.default_backend() != 'cpu':
    pytest.skip('the trace names kernels so on CPU only')

  def f(x, w):  # two outputs: two kernels
    with jax.named_scope('matmul_part'):
      y = x @ w
    with jax.named_scope('reduce_part'):
      return y, jnp.sum(jnp.tanh(x), axis=0)

  x = jnp.asarray(np.random.default_rng(0).random((256, 256), np.float32))
  compiled = jax.jit(f).lower(x, x).compile()
  jax.block_until_ready(compiled(x, x))
  jax.profiler.start_trace(str(tmp_path))
  for _ in range(3):
    jax.block_until_ready(compiled(x, x))
  jax.profiler.stop_trace()
  times = step_profile.kernel_times(
    str(tmp_path), step_profile.op_names(compiled.as_text())
  )
  scopes = {
    scope
    for scope in ('matmul_part', 'reduce_part')
    if any(scope in op and us > 0 for (_, op), us in times.items())
  }
  assert scopes == {'matmul_part', 'reduce_part'}, times


def test_memory_efficient_layer_names_its_parts_in_the_program():
  """The shared-buffer layer's ops carry DenseLayer's module names (the list
  path gets them from Flax), so a profile attributes its kernels."""
  spec = shared_buffer.BlockSpec(
    num_layers=2,
    growth_rate=4,
    bottleneck=True,
    drop_rate=0.5,
    epsilon=1e-5,
    dtype=jnp.float32,
  )
  keys = iter(jax.random.split(jax.random.key(0), 16))
  normal = lambda shape: jax.random.normal(next(keys), shape)  # noqa: E731
  per_layer = [
    {
      'norm1': {'scale': normal((c,)), 'bias': normal((c,))},
      'conv1': {'kernel': normal((1, 1, c, 16))},
      'norm2': {'scale': normal((16,)), 'bias': normal((16,))},
      'conv2': {'kernel': normal((3, 3, 16, 4))},
    }
    for c in (6, 10)
  ]
  x0 = normal((2, 5, 5, 6))

  def loss(per_layer):
    params = shared_buffer.stack_params(spec, per_layer, 6)
    return jnp.sum(
      shared_buffer.dense_block(spec, params, x0, jax.random.key(1)).buffer ** 2
    )

  hlo = jax.jit(jax.grad(loss)).lower(per_layer).compile().as_text()
  names = set(step_profile.op_names(hlo).values())
  for part in ('norm1', 'conv1', 'dropout', 'norm2', 'conv2'):
    # forward: '.../conv1/dot_general'; backward: 'transpose(jvp(conv1))/...'
    assert any(f'/{part}/' in op and 'transpose(' not in op for op in names), (
      part
    )
    assert any(f'transpose(jvp({part}))' in op for op in names), part


def test_accelerator_check_runs_its_checks_on_a_tiny_case(tmp_path):
  """benchmarks.accelerator_check on this CPU, as on a GPU: each variant in
  its own process, the loss falls, the two modes' gradients agree; over two
  (CPU) devices, shard_map and pmap end with the same loss."""
  import json
  import os
  import subprocess
  import sys

  from benchmarks import accelerator_check

  report_path = tmp_path / 'check.json'
  out = subprocess.run(
    [
      sys.executable,
      '-m',
      'benchmarks.accelerator_check',
      '--case',
      'densenet_bc_100_12@16x1:16',
      '--dtypes',
      'bfloat16',
      '--overrides',
      '{"block_sizes": [2, 2], "growth_rate": 4}',
      '--steps',
      '12',
      '--parallelism_steps',
      '3',
      '--json',
      str(report_path),
    ],
    capture_output=True,
    text=True,
    timeout=600,
    cwd=accelerator_check.REPO,
    env=dict(os.environ, JAX_NUM_CPU_DEVICES='2'),
  )
  assert out.returncode == 0, out.stdout + out.stderr[-2000:]
  assert 'all checks passed' in out.stdout
  report = json.loads(report_path.read_text())
  assert [(r['mode'], r['dtype']) for r in report['rows']] == [
    ('plain', 'bfloat16'),
    ('memory_efficient', 'bfloat16'),
  ]
  for row in report['rows']:
    assert row['backend'] == 'cpu' and row['loss_falls']
    assert len(row['losses']) == 12 and row['images_per_s'] > 0
    assert row['compiled_bytes_proxy'] > 0 and 'peak_bytes' not in row
    assert row['losses'][-1] < accelerator_check.LOSS_DROP * row['losses'][0]
  gradients = report['gradients']
  assert gradients['agree'] and 0 < gradients['largest_gradient']
  assert gradients['relative'] <= accelerator_check.GRADIENT_TOLERANCE
  parallel = report['parallelism']
  assert [r['parallelism'] for r in parallel['rows']] == ['shard_map', 'pmap']
  assert parallel['same_loss'], parallel['losses']
  for row in parallel['rows']:
    assert row['devices'] == 2 and row['ms_per_image'] > 0
    # One copy of the state per device, whichever the path.
    assert row['argument_bytes'] >= row['state_bytes'] > 0


def test_inference_benchmark_times_onnxruntime_beside_ours(
  tmp_path, monkeypatch
):
  """The onnxruntime column on a tiny preset: exported and run at the batch."""
  import json

  pytest.importorskip('onnxruntime')
  from benchmarks import inference
  from densenet_flax import models

  monkeypatch.setitem(
    models.PRESETS,
    'tiny',
    dict(
      growth_rate=4,
      block_sizes=(1, 1),
      num_init_features=8,
      bn_size=4,
      compression=0.5,
      stem='cifar',
    ),
  )
  report_path = tmp_path / 'report.json'
  inference.main(
    [
      '--cases',
      'tiny@8x3',
      '--batches',
      '2',
      '--rounds',
      '1',
      '--calls',
      '1',
      '--peers',
      'ours',
      'onnxruntime',
      '--no-faces',
      '--json',
      str(report_path),
    ]
  )
  report = json.loads(report_path.read_text())
  results = report['cases'][0]['results']
  assert set(results) == {'ours', 'ours-e2e', 'onnxruntime'}
  assert all(r['images_per_s'] > 0 for r in results.values())
  assert 'faces' not in report
