"""Data parallelism on 8 fake CPU devices equals one device on the joined batch.

XLA_FLAGS must be set before jax is imported, so these run in subprocesses.
"""

import json
import os
import sys

import multiprocess
import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))


def fake_devices_env(devices: int) -> dict:
  env = dict(os.environ)
  env['XLA_FLAGS'] = (
    env.get('XLA_FLAGS', '')
    + f' --xla_force_host_platform_device_count={devices}'
  )
  return env


def run_checks(logs, name, *checks, kernels='auto'):
  """multidevice_check.py once per (args, devices) of `checks`, each in its
  own process with that many fake CPU devices and the kernel set `kernels`,
  all at once: much of a run is single-threaded (imports, compiles), so on 2
  cores the two training runs below take 36 s side by side, 56 s one after
  the other."""

  def env(i):
    return dict(fake_devices_env(checks[i][1]), DENSENET_FLAX_KERNELS=kernels)

  multiprocess.Processes(
    lambda i: [
      sys.executable,
      os.path.join(HERE, 'multidevice_check.py'),
      *checks[i][0],
    ],
    len(checks),
    logs,
    name,
    env=env,
  ).check(timeout=600)


@pytest.mark.parametrize('kernels', ['cpu', 'generic'])
@pytest.mark.parametrize('mode', ['plain', 'memory_efficient'])
def test_pmapped_step_equals_single_device_step(tmp_path, mode, kernels):
  """Gradients, loss and BN statistics are averaged across devices.

  memory_efficient: the 8 devices run the shared-buffer block, whose
  backward pass differentiates the cross-device BN statistics by hand; the
  1-device reference is the plain list path. 'generic': the kernels GPUs
  and TPUs run.
  """
  path = tmp_path / 'step.npz'
  run_checks(
    tmp_path / 'logs',
    'step',
    (('step', str(path), *([mode] if mode != 'plain' else [])), 8),
    kernels=kernels,
  )
  diffs = np.load(path)
  for name in ('params', 'batch_stats', 'loss'):
    for parallelism in ('pmap', 'shard_map'):
      key = f'{parallelism}/{name}'
      assert diffs[key] < 1e-5, (key, float(diffs[key]))
    # The two ways of compiling run one program: the same bits.
    assert diffs[f'pmap_vs_shard_map/{name}'] == 0.0, name


def test_shard_map_gradients_are_averaged_once(tmp_path):
  """check_vma=False (DataParallel's choice, and pmap's) leaves the mean to
  the step's pmean: 8 devices give the 1-device gradient. With shard_map's
  default check_vma=True the gradient of replicated params arrives summed
  over the devices already, and the pmean keeps that sum: 8 times too big."""
  path = tmp_path / 'vma.npz'
  run_checks(
    tmp_path / 'logs', 'vma', (('vma', str(path)), 8), kernels='generic'
  )
  out = np.load(path)
  assert out['check_vma=False/difference'] < 1e-5
  assert out['check_vma=False/ratio'] == pytest.approx(1.0, abs=1e-4)
  assert out['check_vma=True/ratio'] == pytest.approx(8.0, rel=1e-4)


def test_train_step_under_ones_own_jit_and_named_shardings(tmp_path):
  """docs/training.md's research example: steps.train_step (axis_name=None)
  jitted with NamedShardings over 8 devices computes the 1-device step; XLA
  inserts the cross-device means, BN statistics included."""
  path = tmp_path / 'spmd.npz'
  run_checks(tmp_path / 'logs', 'spmd', (('spmd', str(path)), 8))
  diffs = np.load(path)
  for name in ('params', 'batch_stats', 'loss'):
    assert diffs[name] < 1e-5, (name, float(diffs[name]))


def train_checks(digits_dir, tmp_path, runs):
  """multidevice_check.py train for each name -> (devices, overrides) of
  `runs` at once; their .npz contents by name."""
  checks = [
    (
      (
        'train',
        digits_dir,
        str(tmp_path / name),
        str(tmp_path / f'{name}.npz'),
        *(f'{k}={json.dumps(v)}' for k, v in overrides.items()),
      ),
      devices,
    )
    for name, (devices, overrides) in runs.items()
  ]
  run_checks(tmp_path / 'logs', 'train', *checks)
  return {name: dict(np.load(tmp_path / f'{name}.npz')) for name in runs}


def variable_keys(result):
  return sorted(k for k in result if k.startswith('['))


def assert_same_bits(a, b):
  assert variable_keys(a) == variable_keys(b) != []
  for key in variable_keys(a):
    np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_training_on_8_devices_matches_1_device(digits_dir, tmp_path):
  out = train_checks(
    digits_dir,
    tmp_path,
    {'one': (1, {}), 'shard_map': (8, {'parallelism': 'shard_map'})},
  )
  one, eight = out['one'], out['shard_map']
  assert one['devices'] == 1 and eight['devices'] == 8
  assert one['test_examples'] == eight['test_examples'] == 359
  assert variable_keys(one) == variable_keys(eight) != []
  for key in variable_keys(one):
    np.testing.assert_allclose(
      one[key], eight[key], atol=2e-4, rtol=2e-4, err_msg=key
    )
  assert abs(float(one['eval_accuracy']) - float(eight['eval_accuracy'])) <= (
    1 / 359
  )


@pytest.mark.slow
def test_shard_map_and_pmap_train_to_the_same_bits_and_resume_each_other(
  digits_dir, tmp_path
):
  """The demo's loop on 8 devices under each: the same parameters and BN
  statistics, bit for bit. Stopped after 5 of 16 steps under one and
  resumed under the other: the same bits again."""
  stop = {'stop_after_steps': 5}
  first = train_checks(
    digits_dir,
    tmp_path,
    {
      'uninterrupted': (8, {'parallelism': 'pmap'}),
      'shard_map': (8, {'parallelism': 'shard_map'}),
      'pmap_then_shard_map': (8, {'parallelism': 'pmap', **stop}),
      'shard_map_then_pmap': (8, {'parallelism': 'shard_map', **stop}),
    },
  )
  assert_same_bits(first['shard_map'], first['uninterrupted'])
  assert (
    first['shard_map']['eval_accuracy']
    == (first['uninterrupted']['eval_accuracy'])
  )
  assert first['pmap_then_shard_map']['step'] == 5
  resumed = train_checks(
    digits_dir,
    tmp_path,
    {
      'pmap_then_shard_map': (8, {'parallelism': 'shard_map'}),
      'shard_map_then_pmap': (8, {'parallelism': 'pmap'}),
    },
  )
  for result in resumed.values():
    assert result['step'] == first['uninterrupted']['step'] == 16
    assert_same_bits(result, first['uninterrupted'])
