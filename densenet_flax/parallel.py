"""Data parallelism over the local devices: pmap for many, jit for one.

`DataParallel` hides the difference: it compiles a step with `jax.pmap`
(axis 'batch', state replicated, batches split on a leading device axis) or,
on a single device, with `jax.jit` and no device axis. Transfers are explicit
(`jax.device_put` with a sharding), never implicit inside the loop; this works
on jax 0.10-0.12, where `device_put_replicated`/`device_put_sharded` are gone.
"""

from __future__ import annotations

import collections
import itertools
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np

AXIS_NAME = 'batch'


class DataParallel:
  """How state and batches live on `devices`, and how steps are compiled."""

  def __init__(self, devices: list | None = None):
    self.devices = list(devices or jax.local_devices())
    self.num_devices = len(self.devices)
    self.axis_name = AXIS_NAME if self.num_devices > 1 else None
    if self.num_devices > 1:
      mesh = jax.sharding.Mesh(np.array(self.devices), ('devices',))
      self._split = jax.sharding.NamedSharding(
          mesh, jax.sharding.PartitionSpec('devices'))
    else:
      self._split = jax.sharding.SingleDeviceSharding(self.devices[0])

  def compile(self, step: Callable, *, num_args: int,
              broadcast: tuple[int, ...] = (),
              donate_state: bool = False) -> Callable:
    """pmap (or jit) `step(state, batch, *rest)` of `num_args` arguments.

    Arguments at positions `broadcast` are the same on every device (e.g. the
    run's rng key) and are not split.
    """
    donate = (0,) if donate_state else ()
    if self.num_devices == 1:
      return jax.jit(step, donate_argnums=donate)
    in_axes = tuple(None if i in broadcast else 0 for i in range(num_args))
    return jax.pmap(step, axis_name=AXIS_NAME, in_axes=in_axes,
                    donate_argnums=donate, devices=self.devices)

  def put_batch(self, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    """Host batch [devices, per_device, ...] -> device arrays, one shard each."""
    if self.num_devices == 1:
      batch = {k: v[0] for k, v in batch.items()}
    return jax.device_put(batch, self._split)

  def put_replicated(self, tree: Any) -> Any:
    """One copy of `tree` per device (leading axis = device), or the tree itself."""
    if self.num_devices == 1:
      return jax.device_put(tree, self._split)
    stacked = jax.tree_util.tree_map(
        lambda x: np.broadcast_to(np.asarray(x), (self.num_devices,
                                                  *np.shape(x))), tree)
    return jax.device_put(stacked, self._split)

  def first_replica(self, tree: Any) -> Any:
    """The copy on the first device (replicas are identical)."""
    if self.num_devices == 1:
      return tree
    return jax.tree_util.tree_map(lambda x: x[0], tree)


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
