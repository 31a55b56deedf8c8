"""Data parallelism over every device of every process: pmap for many, jit for one.

`DataParallel` is the one place that knows how state and batches live on the
devices. With more than one device in the run (on this host or on others) it
compiles a step with `jax.pmap` over all of them (axis 'batch'): each process
feeds its own local devices, and collectives (gradient, loss, metric and BN
statistic means) span every process. With a single device it uses `jax.jit`
and no device axis.

Device order is process-major: global device `p * M + d` is local device `d`
of process `p` (M devices per process). The input pipeline gives process `p`
rows `[p * B/N, (p + 1) * B/N)` of each global batch of B examples (N
processes), and splits them over its devices in order, so device `k` gets
rows `[k * B/(N*M), (k + 1) * B/(N*M))` whether the run has N processes of
M devices or one process of N*M devices: both compute the same step.

State on the devices is "replicated" the pmap way: one copy per local device,
stacked on a leading axis (host-local arrays). `global_copy` turns that into
fully replicated global arrays, which Orbax saves from every process, and
`put_replicated` accepts any of the forms back. Transfers are explicit
(`jax.device_put` with a sharding), never implicit inside the loop; this works
on jax 0.10-0.12, where `device_put_replicated`/`device_put_sharded` are gone.
A jit + NamedSharding path could replace pmap here without the loop changing.
"""

from __future__ import annotations

import collections
import functools
import itertools
import logging
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np
from jax import lax

AXIS_NAME = 'batch'
P = jax.sharding.PartitionSpec

log = logging.getLogger(__name__)


def initialize(
  coordinator_address: str = '',
  num_processes: int = 0,
  process_id: int = -1,
  timeout_s: int = 100,
) -> None:
  """`jax.distributed.initialize`, before any other JAX call.

  Empty arguments (''/0/-1) are left to JAX's cluster auto-detection (SLURM,
  Open MPI, Kubernetes, Cloud TPU; JAX_COORDINATOR_ADDRESS). `timeout_s` is how
  long a process waits for a dead peer (missed heartbeats, the shutdown
  barrier) before it exits with an error.
  """
  kwargs = {}
  if coordinator_address:
    kwargs['coordinator_address'] = coordinator_address
  if num_processes:
    kwargs['num_processes'] = num_processes
  if process_id >= 0:
    kwargs['process_id'] = process_id
  jax.distributed.initialize(
    heartbeat_timeout_seconds=timeout_s,
    shutdown_timeout_seconds=timeout_s,
    **kwargs,
  )
  log.info(
    'Process %d of %d; %d local of %d devices',
    jax.process_index(),
    jax.process_count(),
    jax.local_device_count(),
    jax.device_count(),
  )


def _process_major(devices) -> list:
  return sorted(devices, key=lambda d: (d.process_index, d.id))


class DataParallel:
  """How state and batches live on `devices` (default: all, of all processes)."""

  def __init__(self, devices: list | None = None):
    self.devices = _process_major(devices or jax.devices())
    self.local_devices = [
      d for d in self.devices if d.process_index == jax.process_index()
    ]
    self.num_devices = len(self.devices)
    self.num_local_devices = len(self.local_devices)
    self.axis_name = AXIS_NAME if self.num_devices > 1 else None
    self.num_processes = len({d.process_index for d in self.devices})
    mesh = jax.sharding.Mesh(np.array(self.devices), (AXIS_NAME,))
    # Global arrays with one whole copy on every device of every process.
    self.replicated = jax.sharding.NamedSharding(mesh, P())
    if self.num_devices > 1:
      local_mesh = jax.sharding.Mesh(np.array(self.local_devices), ('devices',))
      self._split = jax.sharding.NamedSharding(local_mesh, P('devices'))
    else:
      self._split = jax.sharding.SingleDeviceSharding(self.devices[0])
    self._any = None

  def compile(
    self,
    step: Callable,
    *,
    num_args: int,
    broadcast: tuple[int, ...] = (),
    donate_state: bool = False,
  ) -> Callable:
    """pmap (or jit) `step(state, batch, *rest)` of `num_args` arguments.

    Arguments at positions `broadcast` are the same on every device (e.g. the
    run's rng key) and are not split.
    """
    donate = (0,) if donate_state else ()
    if self.num_devices == 1:
      return jax.jit(step, donate_argnums=donate)
    in_axes = tuple(None if i in broadcast else 0 for i in range(num_args))
    return jax.pmap(
      step,
      axis_name=AXIS_NAME,
      in_axes=in_axes,
      donate_argnums=donate,
      devices=self.devices,
    )

  def put_batch(self, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    """Host batch [local devices, per_device, ...] -> one shard per local device."""
    if self.num_devices == 1:
      batch = {k: v[0] for k, v in batch.items()}
    return jax.device_put(batch, self._split)

  def put_broadcast(self, tree: Any) -> Any:
    """A `broadcast` argument of a compiled step (e.g. the run's rng key).

    Placed once as a global array on every device, as pmap wants it, so the
    loop makes no transfer. A typed PRNG key goes as its raw key data, which
    jax.random takes as is: under many processes pmap would copy a typed key
    from the host at every call.
    """

    def put(x):
      if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
      host = np.asarray(x)  # every process holds the same value
      return jax.make_array_from_callback(
        host.shape, self.replicated, lambda index: host[index]
      )

    return jax.tree_util.tree_map(put, tree)

  def put_replicated(self, tree: Any) -> Any:
    """One copy of `tree` per local device (leading axis), or the tree itself.

    Leaves may be host arrays or global arrays (e.g. a restored checkpoint).
    """
    host = jax.tree_util.tree_map(local_value, tree)
    if self.num_devices == 1:
      return jax.device_put(host, self._split)
    stacked = jax.tree_util.tree_map(
      lambda x: np.broadcast_to(x, (self.num_local_devices, *np.shape(x))), host
    )
    return jax.device_put(stacked, self._split)

  def first_replica(self, tree: Any) -> Any:
    """This process's copy on its first device (replicas are identical)."""
    if self.num_devices == 1:
      return tree
    return jax.tree_util.tree_map(lambda x: x[0], tree)

  def global_copy(self, tree: Any) -> Any:
    """Replicated state -> global arrays, replicated over every device.

    Orbax saves these from all processes at once (process 0 writes the bytes
    of a replicated array); the same arrays in one process are plain arrays.
    """
    if self.num_devices == 1:
      return tree
    order = {d: i for i, d in enumerate(self.local_devices)}

    def convert(x):
      shards = sorted(x.addressable_shards, key=lambda s: order[s.device])
      return jax.make_array_from_single_device_arrays(
        x.shape[1:], self.replicated, [s.data[0] for s in shards]
      )

    return jax.tree_util.tree_map(convert, tree)

  def abstract_global(self, tree: Any) -> Any:
    """Shapes and dtypes of `tree` with the replicated global sharding.

    The restore target for Orbax: every process reads the whole state.
    """
    return jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct(
        x.shape, x.dtype, sharding=self.replicated
      ),
      tree,
    )

  def any_process(self, flag: bool) -> Callable[[], bool]:
    """Starts an OR of `flag` over all processes; returns its getter.

    Asynchronous: a caller can read the result one step later, so a device
    round trip does not stall the loop. One process needs no collective.
    """
    if self.num_processes == 1:
      return lambda: flag
    if self._any is None:
      self._any = jax.pmap(
        lambda x: lax.pmax(x, AXIS_NAME),
        axis_name=AXIS_NAME,
        devices=self.devices,
      )
    local = np.full((self.num_local_devices,), int(flag), np.int32)
    result = self._any(jax.device_put(local, self._split))
    return functools.cache(lambda: bool(local_value(result).max()))


def local_value(x) -> np.ndarray:
  """A host copy of `x`; for a replicated global array, this process's copy."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    x = x.addressable_data(0)
  return np.asarray(x)


def prefetch(iterator: Iterator, put: Callable, size: int = 2) -> Iterator:
  """Keeps `size` batches already transferred to the devices ahead of use."""
  queue = collections.deque()

  def fill(n):
    for batch in itertools.islice(iterator, n):
      queue.append(put(batch))

  fill(size)
  while queue:
    yield queue.popleft()
    fill(1)
