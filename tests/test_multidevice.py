"""Data parallelism on 8 fake CPU devices equals one device on the joined batch.

XLA_FLAGS must be set before jax is imported, so these run in subprocesses.
"""

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
    assert diffs[name] < 1e-5, (name, float(diffs[name]))


def test_training_on_8_devices_matches_1_device(digits_dir, tmp_path):
  run_checks(
    tmp_path / 'logs',
    'train',
    *[
      (
        (
          'train',
          digits_dir,
          str(tmp_path / f'run{devices}'),
          str(tmp_path / f'train{devices}.npz'),
        ),
        devices,
      )
      for devices in (1, 8)
    ],
  )
  one, eight = (
    dict(np.load(tmp_path / f'train{devices}.npz')) for devices in (1, 8)
  )
  assert one['devices'] == 1 and eight['devices'] == 8
  assert one['test_examples'] == eight['test_examples'] == 359
  keys = [k for k in one if k.startswith('[')]
  assert keys and set(keys) == {k for k in eight if k.startswith('[')}
  for key in keys:
    np.testing.assert_allclose(
      one[key], eight[key], atol=2e-4, rtol=2e-4, err_msg=key
    )
  assert abs(float(one['eval_accuracy']) - float(eight['eval_accuracy'])) <= (
    1 / 359
  )
