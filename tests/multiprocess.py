"""Real OS processes joined by jax.distributed on 127.0.0.1, for the tests.

As in JAX's own multi-process tests: pick a free port, start N copies of a
command, each with its process id and one CPU device (gloo collectives), and
collect each one's exit status and output.
"""

import os
import signal
import socket
import subprocess
import sys
import time

import trainutil


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def cpu_env(devices: int = 1) -> dict:
  env = dict(
    os.environ,
    JAX_PLATFORMS='cpu',
    JAX_NUM_CPU_DEVICES=str(devices),
    TF_CPP_MIN_LOG_LEVEL='2',
  )
  env.pop('XLA_FLAGS', None)
  return env


def train_command(workdir, config_file, *flags) -> list[str]:
  return [
    sys.executable,
    os.path.join(trainutil.REPO, 'train.py'),
    '--workdir',
    str(workdir),
    '--config',
    str(config_file),
    *flags,
  ]


def evaluate_command(workdir, *flags) -> list[str]:
  return [
    sys.executable,
    os.path.join(trainutil.REPO, 'evaluate.py'),
    '--workdir',
    str(workdir),
    *flags,
  ]


def run(
  command: list[str], *, timeout: float, devices: int = 1
) -> subprocess.CompletedProcess:
  """`command` to its end in cpu_env(devices), from the repository root,
  its output captured as text."""
  return subprocess.run(
    command,
    capture_output=True,
    text=True,
    timeout=timeout,
    env=cpu_env(devices),
    cwd=trainutil.REPO,
  )


def distributed_train_flags(
  port: int, n: int, i: int, timeout_s: int = 60
) -> list[str]:
  return [
    '--config.distributed=True',
    f'--config.coordinator_address=127.0.0.1:{port}',
    f'--config.num_processes={n}',
    f'--config.process_id={i}',
    f'--config.distributed_timeout_s={timeout_s}',
  ]


class Processes:
  """N processes of `command(i)`, output to logs/<name>-<i>.log.

  env(i): process i's environment; by default `cpu_env()`.
  """

  def __init__(self, command, n: int, logs, name: str, env=None):
    os.makedirs(logs, exist_ok=True)
    self.paths = [os.path.join(logs, f'{name}-{i}.log') for i in range(n)]
    self.procs = []
    for i in range(n):
      with open(self.paths[i], 'w') as log:
        self.procs.append(
          subprocess.Popen(
            command(i),
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env(i) if env else cpu_env(),
            cwd=trainutil.REPO,
          )
        )

  def output(self, i: int) -> str:
    with open(self.paths[i]) as f:
      return f.read()

  def signal(self, i: int, signum) -> None:
    self.procs[i].send_signal(signum)

  def wait(self, timeout: float) -> list[int]:
    """Exit statuses; kills every process still running at the deadline."""
    deadline = time.monotonic() + timeout
    codes = []
    for proc in self.procs:
      try:
        codes.append(proc.wait(timeout=max(0.1, deadline - time.monotonic())))
      except subprocess.TimeoutExpired:
        codes.append(None)
    for proc in self.procs:
      if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    return codes

  def check(self, timeout: float) -> None:
    """Waits; asserts that every process exited 0, showing the failures."""
    codes = self.wait(timeout)
    failed = [
      (i, c, self.output(i)[-3000:]) for i, c in enumerate(codes) if c != 0
    ]
    assert not failed, failed
