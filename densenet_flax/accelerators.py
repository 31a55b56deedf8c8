"""Which accelerators a machine has, and whether JAX runs on them.

`pip install jax` brings JAX's CPU build. On a GPU or TPU machine without
the CUDA plugin (`jax[cuda12]`) or libtpu (`jax[tpu]`), JAX quietly runs on
the CPU, and a training run that should take minutes takes days. The command
lines call `log_backend` at start: it logs the backend and device kinds, and
when the operating system shows an NVIDIA GPU or a Google TPU that JAX does
not use, it warns with the install command that fixes it.

Nothing here imports TensorFlow.
"""

from __future__ import annotations

import collections
import glob
import logging
import os
import shutil
import subprocess

log = logging.getLogger(__name__)

INSTALL_COMMANDS = {
  'gpu': 'pip install -U "jax[cuda12]"',
  'tpu': 'pip install -U "jax[tpu]"',
}
# Where the operating system shows devices (tests point these elsewhere).
DEV_DIR = '/dev'
PCI_DEVICES_DIR = '/sys/bus/pci/devices'
GOOGLE_PCI_VENDOR = '0x1ae0'  # TPUs on a PCI bus (v4 and later, over VFIO)


def nvidia_gpus() -> list[str]:
  """The NVIDIA GPUs the driver shows: `nvidia-smi -L`'s lines, or the
  device files when nvidia-smi is missing or fails."""
  nvidia_smi = shutil.which('nvidia-smi')
  if nvidia_smi:
    try:
      out = subprocess.run(
        [nvidia_smi, '-L'],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
      )
      listed = [
        line.strip()
        for line in out.stdout.splitlines()
        if line.startswith('GPU ')
      ]
      if listed:
        return listed
    except (OSError, subprocess.SubprocessError):
      pass
  return sorted(glob.glob(os.path.join(DEV_DIR, 'nvidia[0-9]*')))


def google_tpus() -> list[str]:
  """TPU device files: /dev/accel* (v2-v4 VMs), or /dev/vfio/N (v5e and
  later) on a machine with a Google PCI device (VFIO alone also serves
  other hardware passed through to a VM)."""
  accel = sorted(glob.glob(os.path.join(DEV_DIR, 'accel[0-9]*')))
  if accel:
    return accel
  vfio = sorted(
    p
    for p in glob.glob(os.path.join(DEV_DIR, 'vfio', '*'))
    if os.path.basename(p).isdigit()
  )
  if vfio and _has_google_pci_device():
    return vfio
  return []


def _has_google_pci_device() -> bool:
  for path in glob.glob(os.path.join(PCI_DEVICES_DIR, '*', 'vendor')):
    try:
      with open(path) as f:
        if f.read().strip().lower() == GOOGLE_PCI_VENDOR:
          return True
    except OSError:
      continue
  return False


def unused_accelerators(backend: str) -> dict[str, list[str]]:
  """{'gpu': [...], 'tpu': [...]}: what the machine has that a JAX running
  on `backend` does not use (empty unless the backend is the CPU)."""
  if backend != 'cpu':
    return {}
  found = {'gpu': nvidia_gpus(), 'tpu': google_tpus()}
  return {kind: names for kind, names in found.items() if names}


def describe_devices(devices) -> str:
  """'2 x NVIDIA H100 80GB HBM3' style: the count of each device kind."""
  kinds = collections.Counter(d.device_kind for d in devices)
  return ', '.join(f'{n} x {kind}' for kind, n in kinds.items())


def log_backend() -> None:
  """Logs JAX's backend and devices; warns when an accelerator sits unused.

  Call it after `jax.distributed.initialize` (under many processes, asking
  for devices earlier would start JAX alone).
  """
  import jax

  backend = jax.default_backend()
  log.info(
    'JAX %s on %s: %s (this process: %d of %d devices)',
    jax.__version__,
    backend,
    describe_devices(jax.devices()),
    jax.local_device_count(),
    jax.device_count(),
  )
  if os.environ.get('JAX_PLATFORMS', '').strip().lower() == 'cpu':
    return  # the CPU was asked for
  for kind, names in unused_accelerators(backend).items():
    shown = '; '.join(names[:4]) + ('; ...' if len(names) > 4 else '')
    log.warning(
      'This machine has %s %s (%s) but JAX runs on the CPU: it has no %s '
      'support installed. Run `%s` and start again.',
      len(names),
      'NVIDIA GPU(s)' if kind == 'gpu' else 'Google TPU chip(s)',
      shown,
      'CUDA' if kind == 'gpu' else 'TPU',
      INSTALL_COMMANDS[kind],
    )


def enable_compilation_cache(config) -> None:
  """Points JAX's persistent compilation cache at config.compilation_cache_dir
  ('' = off): a resumed or repeated run loads its compiled steps."""
  import jax

  if config.get('compilation_cache_dir'):
    path = os.path.expanduser(config.compilation_cache_dir)
    os.makedirs(path, exist_ok=True)
    jax.config.update('jax_compilation_cache_dir', path)
