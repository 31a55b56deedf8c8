"""One training run per workdir: the lock that refuses a second writer.

  workdir/run.lock   while a run holds the workdir: its host, pid, start
                     time (UTC) and command line, as JSON

Checkpoints, metrics.jsonl, config.json and TensorBoard's files all assume
one writer, so train.py takes this lock before it writes anything, and a
second run on the same workdir stops at once with WorkdirLockedError
(train.py exits 75, EX_TEMPFAIL, which schedulers retry) naming the
holder, or waits for it (`wait_s`). Readers (evaluation, inference, export)
take no lock: they read only committed checkpoints.

Kinds (config.workdir_lock):
  flock      `fcntl.flock` on run.lock. The kernel releases it when the
             holder dies, even by kill -9, so a crash leaves no stale lock.
  heartbeat  run.lock is created exclusively (O_CREAT | O_EXCL) and the
             holder refreshes its modification time every few seconds; a
             file whose heartbeat is older than `stale_s` is taken for
             a dead run's and taken over. For file systems without flock,
             and network mounts where flock only locks against the same
             client.
  auto       flock, falling back to heartbeat where the file system refuses
             flock (ENOLCK, EOPNOTSUPP).
  none       no lock.

Whatever the kind, the holder refreshes the heartbeat and also flocks its
file where it can, so runs of different kinds on one workdir exclude each
other too. Under many processes, process 0 alone takes the lock and tells
the others its answer through JAX's coordination service (`hold`). Nothing
here imports JAX or TensorFlow at import time.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import itertools
import json
import logging
import os
import secrets
import shlex
import socket
import sys
import threading
import time
from collections.abc import Iterator

from densenet_flax.config_keys import WORKDIR_LOCKS

log = logging.getLogger(__name__)

LOCK_FILE = 'run.lock'
KINDS = WORKDIR_LOCKS  # auto, flock, heartbeat, none
EXIT_CODE = os.EX_TEMPFAIL  # 75: try again later (sysexits.h)
DEFAULT_STALE_S = 120.0
# What a file system that cannot lock answers flock() with.
_NO_FLOCK = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP}
_POLL_S = 0.5  # how often a waiting run tries again
_RECORD_WAIT_S = 1.0  # a new holder's record is written right after its lock


class WorkdirLockedError(RuntimeError):
  """Another training run holds the workdir (`holder`: its record, if read)."""

  def __init__(self, message: str, holder: dict | None = None):
    super().__init__(message)
    self.holder = holder


def describe(holder: dict | None) -> str:
  """'pid 123 on host-a since 2025-01-02T03:04:05Z (command: train.py ...)'."""
  if not holder:
    return 'a run whose record is not written yet'
  command = holder.get('command')
  if isinstance(command, list):
    command = shlex.join(str(c) for c in command)
  return (
    f'pid {holder.get("pid", "?")} on {holder.get("host", "?")} since '
    f'{holder.get("since", "?")}'
    + (f' (command: {command})' if command else '')
  )


def locked_message(workdir: str, holder: dict | None, waited_s=0.0) -> str:
  waited = f' (waited {waited_s:g} s)' if waited_s else ''
  return (
    f'{workdir} is in use by another training run{waited}: '
    f'{describe(holder)}. One run trains in a workdir at a time: wait for it '
    f'to end, stop it, or use another --workdir; '
    f'--config.wait_for_lock_s=N waits up to N seconds for it.'
  )


def read_holder(workdir: str) -> dict | None:
  """The record of the run holding `workdir`'s lock file; None if none."""
  return _read_record(os.path.join(workdir, LOCK_FILE))


class WorkdirLock:
  """A held lock: run.lock's descriptor, and the heartbeat that keeps it.

  `release` (or leaving the `with` block) removes the file and lets go.
  """

  def __init__(self, path: str, kind: str, fd: int, record: dict, stale_s):
    self.path, self.kind, self.record = path, kind, record
    self._fd = fd
    self._stop = threading.Event()
    self._beats = threading.Thread(
      target=self._beat,
      args=(min(5.0, stale_s / 4),),
      name='workdir-lock-heartbeat',
      daemon=True,
    )
    self._beats.start()

  def _beat(self, interval_s: float) -> None:
    while not self._stop.wait(interval_s):
      try:
        if not _is_linked(self._fd, self.path):
          log.error(
            "The lock %s is no longer this run's: it was removed, or taken "
            'over as stale (now: %s). Two runs may write this workdir; stop '
            'one of them.',
            self.path,
            describe(_read_record(self.path)),
          )
          return
        os.utime(self._fd)
      except OSError as e:  # storage hiccup: the next beat tries again
        log.warning('Workdir lock %s: heartbeat failed: %s', self.path, e)

  def release(self) -> None:
    if self._fd is None:
      return
    self._stop.set()
    self._beats.join()
    # Removed while still held: a run that opened the file meanwhile finds
    # it unlinked once it gets the lock, and opens the path again.
    with contextlib.suppress(OSError):
      if _is_linked(self._fd, self.path):
        os.remove(self.path)
    os.close(self._fd)
    self._fd = None

  def __enter__(self) -> WorkdirLock:
    return self

  def __exit__(self, *exc) -> None:
    self.release()


class _Held(Exception):
  """Another run holds the file (`holder`: its record, if read)."""

  def __init__(self, holder: dict | None):
    super().__init__(describe(holder))
    self.holder = holder


class _FlockRefused(Exception):
  """The file system does not support flock (`error`)."""

  def __init__(self, error: OSError):
    super().__init__(str(error))
    self.error = error


def acquire(
  workdir: str,
  kind: str = 'auto',
  *,
  wait_s: float = 0.0,
  stale_s: float = DEFAULT_STALE_S,
  command: list[str] | None = None,
) -> WorkdirLock:
  """Takes the lock of `workdir` (created if missing), or raises.

  Args:
    workdir: the training workdir.
    kind: 'auto', 'flock' or 'heartbeat' (see the module docstring).
    wait_s: how long to wait for a holder to end (0: refuse at once); a
      wait is logged once, naming the holder.
    stale_s: a heartbeat older than this marks a dead holder's file.
    command: the command line to record (default: sys.argv).

  Raises:
    WorkdirLockedError: another run holds it (after `wait_s`).
    OSError: kind='flock' on a file system that cannot flock, or the
      workdir cannot be written.
  """
  if kind not in KINDS[:3]:
    raise ValueError(f'kind={kind!r}: expected one of {KINDS[:3]}')
  if not stale_s > 0:
    raise ValueError(f'stale_s={stale_s!r}: expected a positive number')
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, LOCK_FILE)
  record = {
    'host': socket.gethostname(),
    'pid': os.getpid(),
    'since': datetime.datetime.now(datetime.timezone.utc).strftime(
      '%Y-%m-%dT%H:%M:%SZ'
    ),
    'command': list(sys.argv if command is None else command),
  }
  start = time.monotonic()
  waiting = False
  while True:
    record.update(lock=kind if kind != 'auto' else 'flock')
    record.update(token=secrets.token_hex(8))  # tells our file from others'
    try:
      if kind == 'heartbeat':
        return _take_heartbeat(path, record, stale_s)
      return _take_flock(path, record, stale_s)
    except _FlockRefused as e:
      if kind == 'flock':
        raise OSError(
          e.error.errno,
          f'config.workdir_lock=flock: the file system of {workdir} cannot '
          f'flock ({os.strerror(e.error.errno)}); use workdir_lock=heartbeat '
          f'(or auto)',
        ) from e.error
      log.warning(
        'The file system of %s cannot flock (%s): the workdir lock uses '
        'a heartbeat file instead',
        workdir,
        os.strerror(e.error.errno),
      )
      kind = 'heartbeat'
    except _Held as e:
      waited = time.monotonic() - start
      if waited >= wait_s:
        raise WorkdirLockedError(
          locked_message(workdir, e.holder, wait_s), e.holder
        ) from None
      if not waiting:
        log.info(
          '%s is in use by %s; waiting up to %g s for it to end',
          workdir,
          describe(e.holder),
          wait_s,
        )
        waiting = True
      time.sleep(min(_POLL_S, wait_s - waited))


def _take_flock(path: str, record: dict, stale_s: float) -> WorkdirLock:
  while True:
    try:
      fd, created = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL), True
    except FileExistsError:
      try:
        fd, created = os.open(path, os.O_RDWR), False
      except FileNotFoundError:  # released just now
        continue
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      os.close(fd)
      raise _Held(_read_record(path, wait=True)) from None
    except OSError as e:
      os.close(fd)
      if e.errno not in _NO_FLOCK:
        raise
      if created:  # the heartbeat lock creates it afresh
        with contextlib.suppress(OSError):
          os.remove(path)
      raise _FlockRefused(e) from None
    if not _is_linked(fd, path):  # its holder removed it as it let go
      os.close(fd)
      continue
    # A heartbeat-kind holder that could not flock (another client of a
    # network file system) still holds the file while its heartbeat is fresh.
    previous = _read_record(path)
    if previous and previous.get('lock') == 'heartbeat':
      age = _age_s(path)
      if age <= stale_s:
        os.close(fd)
        raise _Held(previous)
      _warn_taken_over(path, previous, age, stale_s)
    return _hold(path, fd, record, stale_s)


def _take_heartbeat(path: str, record: dict, stale_s: float) -> WorkdirLock:
  while True:
    try:
      fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
    except FileExistsError:
      taken = _take_over_if_stale(path, record, stale_s)
      if taken is None:  # released meanwhile: create it
        continue
      return taken
    _flock_if_possible(fd)
    return _hold(path, fd, record, stale_s)


def _take_over_if_stale(
  path: str, record: dict, stale_s: float
) -> WorkdirLock | None:
  """Replaces a dead holder's file (heartbeat older than `stale_s`) with
  ours, atomically; raises _Held for a live one; None if it is gone.

  One run at a time takes over, under run.lock.takeover (itself created
  exclusively); it checks that the file is still the same stale one before
  renaming its own over it.
  """
  seen = _identity(path)
  holder = _read_record(path, wait=True)
  if seen is None:
    return None
  if _age_s(path) <= stale_s or _locked_by_flock(path):
    raise _Held(holder)
  guard = path + '.takeover'
  try:
    os.close(os.open(guard, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
  except FileExistsError:
    if _age_s(guard) > stale_s:  # a run died taking over: clear the way
      with contextlib.suppress(OSError):
        os.remove(guard)
    raise _Held(holder) from None
  try:
    if _identity(path) != seen:  # another run took it over first
      raise _Held(_read_record(path, wait=True))
    age = _age_s(path)
    temporary = f'{path}.{record["token"]}.tmp'
    fd = os.open(temporary, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
    try:
      _write_record(fd, record)
      os.replace(temporary, path)
    except BaseException:
      os.close(fd)
      with contextlib.suppress(OSError):
        os.remove(temporary)
      raise
  finally:
    with contextlib.suppress(OSError):
      os.remove(guard)
  _warn_taken_over(path, holder, age, stale_s)
  _flock_if_possible(fd)
  return _hold(path, fd, record, stale_s, written=True)


def _warn_taken_over(path, holder, age_s: float, stale_s: float) -> None:
  log.warning(
    'Took over the workdir lock %s of %s: its heartbeat is %.0f s old '
    '(workdir_lock_stale_s=%g), so that run is taken to be dead',
    path,
    describe(holder),
    age_s,
    stale_s,
  )


def _hold(
  path: str, fd: int, record: dict, stale_s: float, written: bool = False
) -> WorkdirLock:
  if not written:
    _write_record(fd, record)
  log.info('Holding the workdir lock %s (%s)', path, record['lock'])
  return WorkdirLock(path, record['lock'], fd, record, stale_s)


def _write_record(fd: int, record: dict) -> None:
  data = json.dumps(record).encode()
  os.ftruncate(fd, 0)
  os.pwrite(fd, data, 0)
  os.fsync(fd)


def _read_record(path: str, wait: bool = False) -> dict | None:
  """The JSON record in `path`; None for no file, or one not (yet) written.

  With `wait`, a file still empty or half written is read again for up to
  a second: a new holder writes its record right after taking the lock.
  """
  deadline = time.monotonic() + (_RECORD_WAIT_S if wait else 0)
  while True:
    try:
      with open(path, 'rb') as f:
        return json.loads(f.read().decode())
    except FileNotFoundError:
      return None
    except (OSError, ValueError):  # ValueError: JSON or UTF-8
      if time.monotonic() >= deadline:
        return None
      time.sleep(0.05)


def _identity(path: str) -> tuple[int, int] | None:
  try:
    st = os.stat(path)
  except FileNotFoundError:
    return None
  return st.st_dev, st.st_ino


def _is_linked(fd: int, path: str) -> bool:
  """Whether `path` still names the file open as `fd`."""
  st = os.fstat(fd)
  return _identity(path) == (st.st_dev, st.st_ino)


def _age_s(path: str) -> float:
  """Seconds since `path` was last modified (its heartbeat); 0 if missing.

  Read through a fresh open: on NFS, opening revalidates the cached
  attributes that a plain stat may return.
  """
  try:
    fd = os.open(path, os.O_RDONLY)
  except FileNotFoundError:
    return 0.0
  try:
    return time.time() - os.fstat(fd).st_mtime
  finally:
    os.close(fd)


def _flock_if_possible(fd: int) -> None:
  """The heartbeat holder also flocks its file where the file system can,
  so flock-kind runs on the same machine are refused at once."""
  with contextlib.suppress(OSError):
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


def _locked_by_flock(path: str) -> bool:
  """Whether a process holds a flock on `path` (False where flock fails)."""
  try:
    fd = os.open(path, os.O_RDONLY)
  except FileNotFoundError:
    return False
  try:
    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
  except BlockingIOError:
    return True
  except OSError:
    return False
  finally:
    os.close(fd)
  return False


# --- a training run's lock -------------------------------------------------------


def check_free(workdir: str, config) -> None:
  """Raises WorkdirLockedError if another run holds `workdir` now.

  For a command line to refuse before its slow imports (TensorFlow takes
  seconds); `hold` takes the lock for real later. It takes the lock and
  lets go at once. Only where `hold` would refuse at once in one process:
  not for config.wait_for_lock_s > 0, many processes or kind 'none'.
  """
  kind, stale_s = config.workdir_lock, config.workdir_lock_stale_s
  if (
    kind not in KINDS[:3]  # config_checks names a bad value later
    or config.wait_for_lock_s
    or config.distributed
    or not stale_s > 0
  ):
    return
  acquire(workdir, kind, stale_s=stale_s).release()


_ROUNDS = itertools.count()  # every process takes its locks in the same order


@contextlib.contextmanager
def hold(workdir: str, config) -> Iterator[WorkdirLock | None]:
  """The lock of `workdir`, as `config` says, for the `with` block.

  config.workdir_lock picks the kind ('none': no lock), wait_for_lock_s
  how long to wait, workdir_lock_stale_s when a heartbeat is stale. Under
  many processes, process 0 takes the lock and the others wait for its
  answer through JAX's coordination service (for up to wait_for_lock_s +
  distributed_timeout_s); every process raises WorkdirLockedError when it
  was refused. Yields the lock on the process that holds it, else None.
  """
  kind = config.workdir_lock
  if kind == 'none':
    log.info('config.workdir_lock=none: %s is not locked', workdir)
    yield None
    return
  take = lambda: acquire(  # noqa: E731
    workdir,
    kind,
    wait_s=config.wait_for_lock_s,
    stale_s=config.workdir_lock_stale_s,
  )
  import jax

  if jax.process_count() == 1:
    with take() as lock:
      yield lock
    return
  from jax._src import distributed

  # The coordination service's key-value store: process 0's answer.
  client = distributed.global_state.client
  key = f'densenet_flax/workdir_lock/{next(_ROUNDS)}'
  if jax.process_index() == 0:
    try:
      lock = take()
    except WorkdirLockedError as e:
      client.key_value_set(key, json.dumps({'locked': str(e)}))
      raise
    except BaseException as e:
      client.key_value_set(key, json.dumps({'failed': f'{e!r}'}))
      raise
    with lock:
      client.key_value_set(key, json.dumps({'held': lock.record}))
      yield lock
    return
  timeout_s = config.wait_for_lock_s + config.distributed_timeout_s
  try:
    answer = json.loads(
      client.blocking_key_value_get(key, int(timeout_s * 1000))
    )
  except Exception as e:  # noqa: BLE001 - the service's own error types
    raise RuntimeError(
      f'Process 0 did not say within {timeout_s:g} s whether it holds the '
      f'lock of {workdir}: {e}'
    ) from e
  if 'locked' in answer:
    raise WorkdirLockedError(answer['locked'])
  if 'failed' in answer:
    raise RuntimeError(
      f'Process 0 could not take the lock of {workdir}: {answer["failed"]}'
    )
  yield None
