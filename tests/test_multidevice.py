"""Data parallelism on 8 fake CPU devices equals one device on the joined batch.

XLA_FLAGS must be set before jax is imported, so these run in subprocesses.
"""

import os
import subprocess
import sys

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))


def start_check(*args, devices=8):
  """multidevice_check.py with `devices` fake CPU devices, started."""
  env = dict(os.environ)
  env['XLA_FLAGS'] = (env.get('XLA_FLAGS', '') +
                      f' --xla_force_host_platform_device_count={devices}')
  return subprocess.Popen(
      [sys.executable, os.path.join(HERE, 'multidevice_check.py'), *args],
      env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_check(process):
  try:
    _, stderr = process.communicate(timeout=600)
  finally:
    process.kill()
  assert process.returncode == 0, stderr[-4000:]


def run_side_by_side(*checks):
  """Each check's (args, devices) in its own process, all at once: much of
  a run is single-threaded (imports, compiles), so on 2 cores the two
  training runs below take 36 s side by side, 56 s one after the other."""
  processes = [start_check(*args, devices=devices) for args, devices in checks]
  try:
    for process in processes:
      wait_check(process)
  finally:
    for process in processes:
      process.kill()


@pytest.mark.parametrize('mode', ['plain', 'memory_efficient'])
def test_pmapped_step_equals_single_device_step(tmp_path, mode):
  """Gradients, loss and BN statistics are averaged across devices.

  memory_efficient: the 8 devices run the shared-buffer block, whose
  backward pass differentiates the cross-device BN statistics by hand; the
  1-device reference is the plain list path.
  """
  path = tmp_path / 'step.npz'
  wait_check(start_check('step', str(path),
                         *([mode] if mode != 'plain' else [])))
  diffs = np.load(path)
  for name in ('params', 'batch_stats', 'loss'):
    assert diffs[name] < 1e-5, (name, float(diffs[name]))


def test_training_on_8_devices_matches_1_device(digits_dir, tmp_path):
  run_side_by_side(*[
      (('train', digits_dir, str(tmp_path / f'run{devices}'),
        str(tmp_path / f'train{devices}.npz')), devices)
      for devices in (1, 8)])
  one, eight = (dict(np.load(tmp_path / f'train{devices}.npz'))
                for devices in (1, 8))
  assert one['devices'] == 1 and eight['devices'] == 8
  assert one['test_examples'] == eight['test_examples'] == 359
  keys = [k for k in one if k.startswith('[')]
  assert keys and set(keys) == {k for k in eight if k.startswith('[')}
  for key in keys:
    np.testing.assert_allclose(one[key], eight[key], atol=2e-4, rtol=2e-4,
                               err_msg=key)
  assert abs(float(one['eval_accuracy']) - float(eight['eval_accuracy'])) <= (
      1 / 359)
