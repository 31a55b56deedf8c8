"""Test session set-up: quiet TensorFlow logs, CPU only, a quicker LLVM
backend, one compilation cache, shared prepared data."""

import os
import shutil
import sys
import tempfile

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
# One persistent XLA compilation cache for the session and the processes it
# starts: the many tests that train the same tiny models compile each program
# once (docs/benchmarks.md#test-suite). A fresh directory,
# removed at the end: no test reads an entry another session left, and the
# tests leave no files behind. Runs whose config names a cache directory
# (test_multiprocess.py) use theirs.
# pytest-xdist's workers inherit the controller's directory, and only the
# controller removes it.
_WORKER = 'PYTEST_XDIST_WORKER' in os.environ
if _WORKER and os.environ.get('JAX_COMPILATION_CACHE_DIR'):
  _XLA_CACHE = os.environ['JAX_COMPILATION_CACHE_DIR']
else:
  _XLA_CACHE = tempfile.mkdtemp(prefix='densenet_flax_tests_xla_')
  os.environ['JAX_COMPILATION_CACHE_DIR'] = _XLA_CACHE
if 'jax' in sys.modules:  # imported before this file (by a plugin)
  sys.modules['jax'].config.update('jax_compilation_cache_dir', _XLA_CACHE)

# The tests compile with LLVM's -O1 (XLA's backend optimization level; its
# default is 2): the same optimised HLO programs, less tuned machine code, and
# most of a test is compiling (docs/benchmarks.md#test-suite).
# train.py and the benchmarks keep XLA's default. Processes the tests start
# inherit it, but for the multi-process runs, whose environment drops
# XLA_FLAGS (tests/multiprocess.py).
if 'xla_backend_optimization_level' not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = (
    os.environ.get('XLA_FLAGS', '') + ' --xla_backend_optimization_level=1'
  ).strip()

import pytest  # noqa: E402


def pytest_unconfigure(config):
  if not _WORKER:
    shutil.rmtree(_XLA_CACHE, ignore_errors=True)


# Test helpers (fakedata.py) live beside the tests.
sys.path.insert(0, os.path.dirname(__file__))


@pytest.fixture(scope='session')
def fer_rows():
  import fakedata

  return fakedata.fer_rows()


@pytest.fixture(scope='session')
def fer_dirs(fer_rows, tmp_path_factory):
  """(data_dir, manual_dir) with a generated fer2013.csv built by TFDS."""
  import fakedata
  from densenet_flax.datasets import prepare

  root = tmp_path_factory.mktemp('fer2013')
  manual = root / 'manual'
  os.makedirs(manual)
  fakedata.write_fer_csv(manual / 'fer2013.csv', fer_rows)
  prepare.load_builder(
    'fer2013', data_dir=str(root / 'data'), manual_dir=str(manual)
  )
  return str(root / 'data'), str(manual)


@pytest.fixture(scope='session')
def digits_dir(tmp_path_factory):
  from densenet_flax.datasets import prepare

  root = tmp_path_factory.mktemp('digits')
  prepare.load_builder('digits', data_dir=str(root))
  return str(root)


@pytest.fixture(scope='session')
def digits_run(digits_dir, tmp_path_factory):
  """A trained workdir (16 steps): 8x8 digits resized to 16x16, as the demo."""
  import trainutil
  from densenet_flax import training

  workdir = str(tmp_path_factory.mktemp('digits_run'))
  training.train_and_evaluate(
    trainutil.tiny_config(digits_dir, image_size=16, **{'augment.resize': 16}),
    workdir,
  )
  return workdir


@pytest.fixture(params=['cpu', 'generic'])
def kernel_set(request):
  """Each test that takes it runs with both kernel sets: the CPU-tuned
  pieces and the generic ones that GPUs and TPUs run (layers.use_kernels)."""
  from densenet_flax import layers

  with layers.use_kernels(request.param):
    yield request.param
