"""Data parallelism over every device of every process: shard_map or pmap.

`DataParallel` is the one place that knows how state and batches live on the
devices. With more than one device in the run (on this host or on others) it
compiles a step over all of them (mesh axis 'batch') in one of two ways
(config.parallelism):

  'shard_map'  `jax.jit(jax.shard_map(step))`, the form JAX recommends since
               pmap entered maintenance mode (0.8). State is a global array
               replicated over the mesh, batches are global arrays sharded on
               'batch', and Orbax saves and restores the state as it is.
  'pmap'       `jax.pmap(step)`, which JAX 0.10+ builds as jit over shard_map.
               It takes and gives host-local arrays: under many processes
               pmap converts them to global arrays and back on every call,
               and `global_copy` converts the state for Orbax.

Both run the same step, whose collectives (the means of gradients, loss,
metrics and BN statistics) are explicit `lax.pmean`s over 'batch', on the same
shapes, so both compile the same program and compute the same bits; a
checkpoint of one resumes under the other. With a single device it uses
`jax.jit` and no device axis.

Device order is process-major: global device `p * M + d` is local device `d`
of process `p` (M devices per process). The input pipeline gives process `p`
rows `[p * B/N, (p + 1) * B/N)` of each global batch of B examples (N
processes), and splits them over its devices in order, so device `k` gets
rows `[k * B/(N*M), (k + 1) * B/(N*M))` whether the run has N processes of
M devices or one process of N*M devices: both compute the same step.

Transfers are explicit (`jax.device_put`, `make_array_from_*`), never
implicit inside the loop; this works on jax 0.10-0.12, where
`device_put_replicated`/`device_put_sharded` are gone.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import itertools
import logging
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from densenet_flax.config_keys import PARALLELISMS

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


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class _KeyData:
  """A typed PRNG key travelling as its raw data, with its PRNG's name.

  Global arrays of key data are plain uint32 arrays, which every form of
  placement accepts; the compiled step wraps them back before the step sees
  them, so callers pass and receive typed keys only.
  """

  data: jax.Array
  impl: str = dataclasses.field(metadata=dict(static=True))


def _to_key_data(tree):
  def convert(x):
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      return _KeyData(jax.random.key_data(x), str(jax.random.key_impl(x)))
    return x

  return jax.tree_util.tree_map(convert, tree)


def _from_key_data(tree):
  return jax.tree_util.tree_map(
    lambda x: (
      jax.random.wrap_key_data(x.data, impl=x.impl)
      if isinstance(x, _KeyData)
      else x
    ),
    tree,
    is_leaf=lambda x: isinstance(x, _KeyData),
  )


@dataclasses.dataclass(frozen=True)
class CompiledStep:
  """A step compiled by `DataParallel.compile`: call it, or `lower` it with
  the same arguments (abstract ones included) for ahead-of-time compilation
  (benchmarks.tpu_compile) or inspection."""

  compiled: Callable

  def __call__(self, state, batch, *broadcast):
    return self.compiled(state, batch, broadcast)

  def lower(self, state, batch, *broadcast):
    return self.compiled.lower(state, batch, broadcast)


class DataParallel:
  """How state and batches live on `devices` (default: all, of all processes).

  Args:
    devices: the run's devices, of every process (default: jax.devices()).
    parallelism: 'shard_map' or 'pmap' (PARALLELISMS): how a step is compiled
      over more than one device; one device always uses plain jax.jit.
  """

  def __init__(
    self, devices: list | None = None, parallelism: str = 'shard_map'
  ):
    if parallelism not in PARALLELISMS:
      raise ValueError(
        f'parallelism={parallelism!r}: expected one of {PARALLELISMS}'
      )
    self.devices = _process_major(devices or jax.devices())
    self.local_devices = [
      d for d in self.devices if d.process_index == jax.process_index()
    ]
    self.num_devices = len(self.devices)
    self.num_local_devices = len(self.local_devices)
    self.axis_name = AXIS_NAME if self.num_devices > 1 else None
    self.num_processes = len({d.process_index for d in self.devices})
    self.parallelism = parallelism if self.num_devices > 1 else 'jit'
    self.mesh = jax.sharding.Mesh(np.array(self.devices), (AXIS_NAME,))
    # Global arrays with one whole copy on every device of every process.
    self.replicated = jax.sharding.NamedSharding(self.mesh, P())
    # Global arrays whose leading (example) axis is split over the devices.
    self.split = jax.sharding.NamedSharding(self.mesh, P(AXIS_NAME))
    if self.parallelism == 'pmap':
      # pmap takes host-local arrays: batches split over this process's
      # devices, state replicated on them.
      local_mesh = jax.sharding.Mesh(np.array(self.local_devices), ('devices',))
      self._stacked = jax.sharding.NamedSharding(local_mesh, P('devices'))
      self._local_replicated = jax.sharding.NamedSharding(local_mesh, P())
    self._any = None

  @property
  def _pmapped(self) -> bool:
    return self.parallelism == 'pmap'

  def compile(
    self,
    step: Callable,
    *,
    per_example_output: bool = False,
    donate_state: bool = False,
  ) -> Callable:
    """Compiles `step(state, batch, *broadcast)` over the devices.

    `state` is replicated, `batch` split over the devices on its leading
    axis, and each further argument (e.g. the run's PRNG key, typed keys
    included, as `put_broadcast` places it) is the same on every device.
    The outputs are replicated (the new state and device-mean metrics), or,
    with `per_example_output`, split like the batch (evaluation's per-example
    predictions).
    """
    donate = (0,) if donate_state else ()

    def keyed(state, batch, broadcast):
      return step(state, batch, *_from_key_data(broadcast))

    def per_device(state, batch, broadcast):
      # Each device's share arrives as [1, per_device, ...]: the batch keeps
      # its device axis, as the host made it and as pmap would map it.
      out = keyed(
        state, jax.tree_util.tree_map(lambda x: x[0], batch), broadcast
      )
      if per_example_output:
        out = jax.tree_util.tree_map(lambda x: x[None], out)
      return out

    if self.parallelism == 'jit':
      compiled = jax.jit(keyed, donate_argnums=donate)
    elif self._pmapped:
      # The state goes in unmapped (in_axes=None) and comes out replicated
      # (out_axes=None): pmap then compiles exactly the program the shard_map
      # path does, so the two compute the same bits. (Stacked per-device
      # replicas, pmap's older habit, give XLA other shapes to fuse, and the
      # results differ in the last bits.)
      compiled = jax.pmap(
        keyed,
        axis_name=AXIS_NAME,
        in_axes=(None, 0, None),
        out_axes=0 if per_example_output else None,
        donate_argnums=donate,
        devices=self.devices,
      )
    else:
      # check_vma=False, as pmap has it: the step's explicit pmeans average
      # the gradients. With shard_map's default (True), differentiating with
      # respect to replicated params already sums the gradients over 'batch'
      # (the transpose of their implicit broadcast), and the pmean would then
      # see a sum (tests/multidevice_check.py shows both).
      compiled = jax.jit(
        jax.shard_map(
          per_device,
          mesh=self.mesh,
          in_specs=(P(), P(AXIS_NAME), P()),
          out_specs=P(AXIS_NAME) if per_example_output else P(),
          check_vma=False,
        ),
        donate_argnums=donate,
      )
    return CompiledStep(compiled)

  def put_batch(self, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    """Host batch [local devices, per_device, ...] -> the devices' shares."""
    if self.parallelism == 'jit':
      return jax.device_put(
        {k: v[0] for k, v in batch.items()}, self.devices[0]
      )
    if self._pmapped:
      return jax.device_put(batch, self._stacked)

    return {k: self._split_over_devices(v) for k, v in batch.items()}

  def _split_over_devices(self, v: np.ndarray) -> jax.Array:
    """This process's [local devices, ...] -> a global [devices, ...] array.

    Process p's devices come p-th in the (process-major) mesh. Placed shard
    by shard with device_put, an explicit transfer (the loop disallows
    implicit ones, which make_array_from_process_local_data makes under many
    processes).
    """
    shards = jax.device_put(
      [v[i : i + 1] for i in range(self.num_local_devices)], self.local_devices
    )
    return jax.make_array_from_single_device_arrays(
      (self.num_devices, *v.shape[1:]), self.split, shards
    )

  def put_broadcast(self, tree: Any) -> Any:
    """A broadcast argument of a compiled step (e.g. the run's PRNG key).

    Placed once as a global array on every device, so the loop makes no
    transfer; typed PRNG keys travel as their raw data and reach the step as
    typed keys again (under many processes pmap would copy a typed key from
    the host at every call).
    """
    return jax.tree_util.tree_map(self._replicate, _to_key_data(tree))

  def abstract_batch(self, batch: dict[str, Any]) -> dict[str, Any]:
    """What `put_batch` makes of a host batch, as shapes and shardings only.

    `batch`: arrays or jax.ShapeDtypeStructs shaped [local devices,
    per_device, ...]. With `abstract_global`'s state and `abstract_broadcast`,
    a `CompiledStep` lowers for devices that are not there (an abstract TPU
    topology, benchmarks.tpu_compile).
    """

    def place(x):
      if self.parallelism == 'jit':
        sharding = jax.sharding.SingleDeviceSharding(self.devices[0])
        return jax.ShapeDtypeStruct(x.shape[1:], x.dtype, sharding=sharding)
      if self._pmapped:
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=self._stacked)
      shape = (self.num_devices, *x.shape[1:])
      return jax.ShapeDtypeStruct(shape, x.dtype, sharding=self.split)

    return {k: place(v) for k, v in batch.items()}

  def abstract_broadcast(self, tree: Any) -> Any:
    """What `put_broadcast` makes of `tree`, as shapes and shardings only
    (typed PRNG keys become their key data, as there)."""
    return jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct(
        np.shape(x), x.dtype, sharding=self.replicated
      ),
      _to_key_data(tree),
    )

  def put_replicated(self, tree: Any) -> Any:
    """`tree` placed as the compiled step takes its state: one whole copy on
    every device (under pmap with many processes, on this process's devices).

    Leaves may be host arrays or global arrays (e.g. a restored checkpoint).
    """
    if self._pmapped and self.num_processes > 1:
      host = jax.tree_util.tree_map(local_value, tree)
      return jax.device_put(host, self._local_replicated)
    return jax.tree_util.tree_map(self._replicate, tree)

  def _replicate(self, x) -> jax.Array:
    # Through the host: every leaf gets buffers of its own, so that a state
    # whose leaves share arrays (an EMA that starts at the params) can be
    # donated to the step.
    host = local_value(x)  # every process holds the same value
    if self.num_processes == 1:
      return jax.device_put(host, self.replicated)
    return jax.make_array_from_callback(
      host.shape, self.replicated, lambda index: host[index]
    )

  def first_replica(self, tree: Any) -> Any:
    """This process's copy of replicated outputs, on one device.

    Replicas are identical; the copy can be read with jax.device_get.
    """
    if self.parallelism == 'jit':
      return tree
    return jax.tree_util.tree_map(lambda x: x.addressable_data(0), tree)

  def local_rows(self, tree: Any) -> Any:
    """Per-example outputs of this process's rows, as host arrays [rows, ...].

    In the order of the host batch `put_batch` took (local devices in turn).
    """
    # One process holds all of a global array, its devices the local ones.
    if self._pmapped or self.num_processes == 1:
      fetched = jax.device_get(tree)
      if self.parallelism == 'jit':
        return fetched
      return jax.tree_util.tree_map(
        lambda x: x.reshape(-1, *x.shape[2:]), fetched
      )

    def rows(x):
      fetched = jax.device_get([s.data for s in self._local_shards(x)])
      return np.concatenate([data[0] for data in fetched])

    return jax.tree_util.tree_map(rows, tree)

  def global_copy(self, tree: Any) -> Any:
    """The state as global arrays replicated over every device, for Orbax.

    Orbax saves these from all processes at once (process 0 writes the bytes
    of a replicated array). Only pmap's host-local copies under many
    processes need converting.
    """
    if not (self._pmapped and self.num_processes > 1):
      return tree

    def convert(x):
      return jax.make_array_from_single_device_arrays(
        x.shape, self.replicated, [s.data for s in self._local_shards(x)]
      )

    return jax.tree_util.tree_map(convert, tree)

  def _local_shards(self, x: jax.Array) -> list:
    """`x`'s shards on this process's devices, in local_devices' order."""
    order = {d: i for i, d in enumerate(self.local_devices)}
    return sorted(x.addressable_shards, key=lambda s: order[s.device])

  def abstract_global(self, tree: Any) -> Any:
    """Shapes and dtypes of `tree` (one copy, e.g. from jax.eval_shape) with
    the replicated global sharding: the restore target for Orbax, which then
    reads the whole state on every process."""
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
    local = np.full((self.num_local_devices,), int(flag), np.int32)
    if self._pmapped:
      if self._any is None:
        self._any = jax.pmap(
          lambda x: lax.pmax(x, AXIS_NAME),
          axis_name=AXIS_NAME,
          devices=self.devices,
        )
      result = self._any(jax.device_put(local, self._stacked))
    else:
      if self._any is None:
        self._any = jax.jit(jnp.max, out_shardings=self.replicated)
      result = self._any(self._split_over_devices(local))
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
