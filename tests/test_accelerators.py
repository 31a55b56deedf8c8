"""A GPU or TPU that JAX does not use is reported with the command that
fixes it; stand-ins play the hardware (an `nvidia-smi` on PATH, device
files in a temporary /dev)."""

import os
import subprocess
import sys

import pytest

from densenet_flax import accelerators

import trainutil

GPU_LINE = 'GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-5e1f4c34-0000-0000-0000)'


@pytest.fixture
def stand_in_nvidia_smi(tmp_path):
  """A directory with an `nvidia-smi` that lists one H100 for `-L`."""
  bin_dir = tmp_path / 'bin'
  bin_dir.mkdir()
  script = bin_dir / 'nvidia-smi'
  script.write_text(
    f'#!/bin/sh\n[ "$1" = "-L" ] && echo "{GPU_LINE}" && exit 0\nexit 9\n'
  )
  script.chmod(0o755)
  return str(bin_dir)


@pytest.fixture
def no_hardware(tmp_path, monkeypatch):
  """An empty /dev and PCI bus, and no nvidia-smi on PATH."""
  for name in ('dev', 'pci'):
    (tmp_path / name).mkdir()
  monkeypatch.setattr(accelerators, 'DEV_DIR', str(tmp_path / 'dev'))
  monkeypatch.setattr(accelerators, 'PCI_DEVICES_DIR', str(tmp_path / 'pci'))
  monkeypatch.setenv('PATH', str(tmp_path / 'empty'))
  monkeypatch.delenv('JAX_PLATFORMS', raising=False)
  return tmp_path


def test_predict_warns_of_an_unused_gpu_with_the_install_command(
  stand_in_nvidia_smi,
):
  env = dict(
    os.environ, PATH=stand_in_nvidia_smi + os.pathsep + os.environ['PATH']
  )
  env.pop('JAX_PLATFORMS', None)  # nothing asked JAX for the CPU
  out = subprocess.run(
    [
      sys.executable,
      os.path.join(trainutil.REPO, 'predict.py'),
      '--workdir',
      '/nonexistent',
      'photo.png',
    ],
    capture_output=True,
    text=True,
    timeout=120,
    env=env,
  )
  assert out.returncode == 2  # the workdir, after the start-up lines
  assert 'JAX' in out.stderr and 'on cpu' in out.stderr
  assert (
    f'This machine has 1 NVIDIA GPU(s) ({GPU_LINE}) but JAX runs on the CPU'
  ) in out.stderr, out.stderr[-2000:]
  assert 'Run `pip install -U "jax[cuda12]"` and start again' in out.stderr


def test_nothing_is_reported_without_accelerators(no_hardware, caplog):
  with caplog.at_level('INFO', logger='densenet_flax'):
    accelerators.log_backend()
  assert 'on cpu: 1 x cpu' in caplog.text
  assert not [r for r in caplog.records if r.levelname == 'WARNING']
  assert accelerators.unused_accelerators('cpu') == {}


def test_device_files_reveal_gpus_and_tpus(no_hardware, caplog):
  dev = no_hardware / 'dev'
  (dev / 'nvidia0').touch()
  (dev / 'nvidiactl').touch()  # not a GPU
  assert accelerators.unused_accelerators('cpu') == {
    'gpu': [str(dev / 'nvidia0')]
  }
  assert accelerators.unused_accelerators('gpu') == {}  # JAX uses them
  # TPU v5e and later: /dev/vfio/N on a machine with a Google PCI device.
  (dev / 'vfio').mkdir()
  (dev / 'vfio' / '0').touch()
  (dev / 'vfio' / 'vfio').touch()  # the control node is not a device
  assert accelerators.google_tpus() == []  # VFIO alone: any passthrough
  device = no_hardware / 'pci' / '0000:00:04.0'
  device.mkdir()
  (device / 'vendor').write_text('0x1ae0\n')
  assert accelerators.google_tpus() == [str(dev / 'vfio' / '0')]
  (dev / 'accel0').touch()  # TPU v2-v4
  assert accelerators.google_tpus() == [str(dev / 'accel0')]
  with caplog.at_level('WARNING', logger='densenet_flax'):
    accelerators.log_backend()
  assert 'pip install -U "jax[cuda12]"' in caplog.text
  assert 'Google TPU chip(s)' in caplog.text
  assert 'pip install -U "jax[tpu]"' in caplog.text


def test_a_cpu_asked_for_is_not_a_mistake(no_hardware, monkeypatch, caplog):
  (no_hardware / 'dev' / 'nvidia0').touch()
  monkeypatch.setenv('JAX_PLATFORMS', 'cpu')
  with caplog.at_level('INFO', logger='densenet_flax'):
    accelerators.log_backend()
  assert 'on cpu' in caplog.text and 'pip install' not in caplog.text
