"""ONNX export: onnx_export's translator and export.py's --format onnx."""

import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

ort = pytest.importorskip('onnxruntime')
onnx = pytest.importorskip('onnx')

from densenet_flax import run_directory  # noqa: E402
from densenet_flax import recipe  # noqa: E402
from densenet_flax import config_keys  # noqa: E402
from densenet_flax import export  # noqa: E402
from densenet_flax import layers  # noqa: E402
from densenet_flax import onnx_export  # noqa: E402
from densenet_flax.inference import Classifier  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def random_variables(model, input_shape, seed=0):
  """`model`'s variables drawn with NumPy (nothing to compile), with BN
  statistics, scales and shifts away from the identity."""
  abstract = jax.eval_shape(
    lambda: model.init(
      jax.random.key(0), jnp.zeros((1, *input_shape)), train=False
    )
  )
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name = jax.tree_util.keystr(path[-1:])
    if name == "['kernel']":
      value = rng.normal(0, np.sqrt(2 / np.prod(leaf.shape[:-1])), leaf.shape)
    elif name in ("['mean']", "['bias']"):
      value = rng.normal(0, 0.2, leaf.shape)
    else:  # var, scale
      value = rng.uniform(0.5, 1.5, leaf.shape)
    return np.asarray(value, leaf.dtype)

  return jax.tree_util.tree_map_with_path(draw, abstract)


def make_config(model, dataset, size, channels, **overrides):
  config = config_keys.base_config()
  config.model, config.dataset = model, dataset
  config.image_size, config.channels = size, channels
  config.augment.crop = 'none'
  config.model_overrides.update(overrides)
  return config


def session(proto):
  onnx.checker.check_model(proto)
  return ort.InferenceSession(
    proto.SerializeToString(), providers=['CPUExecutionProvider']
  )


@pytest.mark.parametrize(
  'model_name,dataset,size,channels',
  [
    ('fer_densenet', 'fer2013', 48, 1),
    ('densenet121', 'cifar10', 32, 3),  # the ImageNet stem's 3x3/2 max pool
  ],
)
def test_onnx_runtime_gives_classifier_predict(
  model_name, dataset, size, channels
):
  config = make_config(model_name, dataset, size, channels)
  model = recipe.build_model(config)
  variables = random_variables(model, (size, size, channels))
  mean, std = [0.4] * channels, [0.3] * channels
  # One compiled batch size: a batch of 1 is padded to it.
  classifier = Classifier(model, variables, config, mean, std, batch_sizes=(5,))
  runner = session(export.onnx_model(classifier))
  assert runner.get_inputs()[0].shape == ['b', size, size, channels]
  images = np.random.default_rng(1).integers(
    0, 256, (5, size, size, channels), np.uint8
  )
  for batch in (1, 5):
    want = classifier.predict(images[:batch])
    (got,) = runner.run(None, {'pixels': classifier.crops(images[:batch])})
    assert got.shape == want.shape == (batch, len(classifier.class_names))
    np.testing.assert_allclose(got, want, atol=1e-4)
  assert np.ptp(want, axis=1).min() > 0.01, want  # not a uniform answer


@pytest.mark.parametrize(
  'model_name,overrides',
  [
    ('densenet_bc_100_12', dict(block_sizes=(2, 2, 2), memory_efficient=True)),
    ('densenet_40_12', dict(block_sizes=(2, 2, 2))),  # basic layers
  ],
)
def test_cifar_presets_translate(model_name, overrides):
  from densenet_flax import models

  model = models.create_model(model_name, num_classes=10, **overrides)
  variables = random_variables(model, (16, 16, 3))
  (batch,) = jax.export.symbolic_shape('b')

  def logits(x):
    return model.apply(variables, x, train=False)

  with layers.use_kernels('generic'):
    proto = onnx_export.to_onnx(
      logits, [jax.ShapeDtypeStruct((batch, 16, 16, 3), jnp.float32)]
    )
  runner = session(proto)
  x = np.random.default_rng(2).normal(size=(3, 16, 16, 3)).astype(np.float32)
  (got,) = runner.run(None, {'input_0': x})
  np.testing.assert_allclose(got, jax.jit(logits)(x), atol=1e-4, rtol=1e-4)


def small_functions():
  """(name, fn, input shape with 'b' for the batch) beyond the DenseNets'."""
  table = jnp.arange(12.0).reshape(3, 4)
  return [
    ('gather_nd', lambda x: x[:, jnp.array([2, 0, 2])], ('b', 4, 5)),
    ('index_and_window', lambda x: x[:, 1, :2] + x[:, -1:, 3], ('b', 4, 5)),
    ('squeeze', lambda x: jnp.squeeze(x, 1) * 2, ('b', 1, 3)),
    (
      'batched_matmul',
      lambda x: jnp.einsum('bij,bkj->bik', x, x * 2),
      ('b', 3, 4),
    ),
    ('matmul_transposed', lambda x: x @ table.T, ('b', 4)),
    (
      'max_pool',
      lambda x: nn.max_pool(x, (3, 3), (2, 2), 'SAME'),
      ('b', 7, 7, 2),
    ),
    (
      'slice_transpose',
      lambda x: x[:, 1:4:2, 1:].transpose(0, 2, 1),
      ('b', 5, 6),
    ),
    ('where_tanh', lambda x: jnp.where(x > 0, jnp.tanh(x), 0.1 * x), ('b', 3)),
    ('broadcast', lambda x: jnp.broadcast_to(x[:, :1], x.shape) - x, ('b', 4)),
    ('reshape', lambda x: x.reshape(x.shape[0], -1).sum(1), ('b', 2, 3)),
    (
      'constant_of_batch_shape',
      lambda x: jnp.ones((x.shape[0], 3)) * x,
      ('b', 1),
    ),
    ('static_slice', lambda x: x[:, 1:4:2, 1:], (2, 5, 6)),  # not gather
    (
      'rsqrt_cast',
      lambda x: jax.lax.rsqrt(x * x + 1) + (x * 3).astype(jnp.int32),
      ('b', 3),
    ),
  ]


@pytest.mark.parametrize(
  'name,fn,shape', small_functions(), ids=[f[0] for f in small_functions()]
)
def test_primitives_beyond_the_densenets(name, fn, shape):
  (batch,) = jax.export.symbolic_shape('b')
  dims = tuple(batch if d == 'b' else d for d in shape)
  runner = session(
    onnx_export.to_onnx(fn, [jax.ShapeDtypeStruct(dims, jnp.float32)])
  )
  for n in (1, 3) if shape[0] == 'b' else shape[:1]:
    x = (
      np.random.default_rng(n).normal(size=(n, *shape[1:])).astype(np.float32)
      * 2
    )
    (got,) = runner.run(None, {'input_0': x})
    np.testing.assert_allclose(got, fn(x), atol=1e-5, rtol=1e-5)


def test_an_unsupported_primitive_is_named():
  def fn(x):
    return jax.jit(jnp.sin)(x) * 2  # inside a nested jaxpr too

  with pytest.raises(onnx_export.UnsupportedPrimitiveError, match="'sin'"):
    onnx_export.to_onnx(fn, [jax.ShapeDtypeStruct((2, 3), jnp.float32)])


def test_export_command_writes_the_model_and_its_labels(tmp_path):
  """A workdir with one checkpoint, exported by the CLI without TensorFlow."""
  workdir = str(tmp_path / 'run')
  config = make_config(
    'fer_densenet', 'fer2013', 16, 1, block_sizes=(1, 1), growth_rate=4
  )
  os.makedirs(workdir)
  run_directory.save_config(config, workdir)
  run_directory.save_normalization(workdir, [0.5], [0.25])
  model = recipe.build_model(config)
  variables = random_variables(model, (16, 16, 1))
  ckpts = run_directory.open_checkpoints(config, workdir)
  ckpts.save(
    3,
    variables,
    recipe.identity(config),
    eval_metrics={'accuracy': 0.5},
  )
  ckpts.close()
  code = (
    'import atexit, runpy, sys\n'
    'atexit.register(lambda: print("loaded", sorted({m.split(".")[0] '
    'for m in sys.modules} & {"tensorflow", "keras"})))\n'
    f'sys.argv = ["export", "--workdir", {workdir!r}, "--format", "onnx"]\n'
    'runpy.run_module("densenet_flax.export", run_name="__main__")\n'
  )
  out = subprocess.run(
    [sys.executable, '-c', code],
    capture_output=True,
    text=True,
    timeout=300,
    cwd=REPO,
    env=dict(os.environ, JAX_PLATFORMS='cpu'),
  )
  assert out.returncode == 0, out.stderr[-3000:]
  assert 'loaded []' in out.stdout, out.stdout
  path = os.path.join(workdir, 'export', 'model.onnx')
  assert f'wrote {path} (step 3' in out.stdout, out.stdout
  with open(os.path.join(workdir, 'export', 'model.labels.txt')) as f:
    assert (
      tuple(f.read().split())
      == Classifier(model, variables, config, [0.5], [0.25]).class_names
    )
  runner = ort.InferenceSession(path, providers=['CPUExecutionProvider'])
  for batch in (1, 4):
    pixels = np.full((batch, 16, 16, 1), 128.0, np.float32)
    (probabilities,) = runner.run(None, {'pixels': pixels})
    assert probabilities.shape == (batch, 7)
    np.testing.assert_allclose(probabilities.sum(1), 1, rtol=1e-5)
