"""Data parallelism on 8 fake CPU devices equals one device on the joined batch.

XLA_FLAGS must be set before jax is imported, so these run in subprocesses.
"""

import os
import subprocess
import sys

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))


def run_check(*args, devices=8):
  env = dict(os.environ)
  env['XLA_FLAGS'] = (env.get('XLA_FLAGS', '') +
                      f' --xla_force_host_platform_device_count={devices}')
  out = subprocess.run([sys.executable, os.path.join(HERE,
                                                     'multidevice_check.py'),
                        *args], env=env, capture_output=True, text=True,
                       timeout=600)
  assert out.returncode == 0, out.stderr[-4000:]


@pytest.mark.parametrize('mode', ['plain', 'memory_efficient'])
def test_pmapped_step_equals_single_device_step(tmp_path, mode):
  """Gradients, loss and BN statistics are averaged across devices.

  memory_efficient: the 8 devices run the shared-buffer block, whose
  backward pass differentiates the cross-device BN statistics by hand; the
  1-device reference is the plain list path.
  """
  path = tmp_path / 'step.npz'
  run_check('step', str(path), *([mode] if mode != 'plain' else []))
  diffs = np.load(path)
  for name in ('params', 'batch_stats', 'loss'):
    assert diffs[name] < 1e-5, (name, float(diffs[name]))


def test_training_on_8_devices_matches_1_device(digits_dir, tmp_path):
  results = []
  for devices in (1, 8):
    path = tmp_path / f'train{devices}.npz'
    run_check('train', digits_dir, str(tmp_path / f'run{devices}'), str(path),
              devices=devices)
    results.append(dict(np.load(path)))
  one, eight = results
  assert one['devices'] == 1 and eight['devices'] == 8
  assert one['test_examples'] == eight['test_examples'] == 359
  keys = [k for k in one if k.startswith('[')]
  assert keys and set(keys) == {k for k in eight if k.startswith('[')}
  for key in keys:
    np.testing.assert_allclose(one[key], eight[key], atol=2e-4, rtol=2e-4,
                               err_msg=key)
  assert abs(float(one['eval_accuracy']) - float(eight['eval_accuracy'])) <= (
      1 / 359)
