"""Run by test_multidevice.py in a subprocess with N fake CPU devices.

python multidevice_check.py step OUT.npz [memory_efficient]
    # one step: 8 devices (shard_map and pmap) vs 1 (the 8 in
    # memory-efficient mode, if given)
python multidevice_check.py spmd OUT.npz
    # docs/training.md's example: train_step under a plain jax.jit with
    # NamedShardings (axis_name=None) on 8 devices vs 1
python multidevice_check.py vma OUT.npz
    # the model's gradients under shard_map with check_vma False and True
python multidevice_check.py train DATA_DIR WORKDIR OUT.npz [KEY=VALUE...]
    # whole loop, config overrides as JSON values
"""

import functools
import json
import os
import sys

import jax
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from densenet_flax import models  # noqa: E402
from densenet_flax import parallel  # noqa: E402
from densenet_flax import steps  # noqa: E402


def tiny_model(axis_name, memory_efficient=False):
  return models.create_model(
    'densenet_bc_100_12',
    num_classes=5,
    block_sizes=(2, 2),
    growth_rate=4,
    bn_axis_name=axis_name,
    memory_efficient=memory_efficient,
  )


def tiny_optimizer():
  return optax.chain(
    optax.add_decayed_weights(1e-4), optax.sgd(0.1, momentum=0.9, nesterov=True)
  )


def one_step(
  devices, batch, class_weights, memory_efficient=False, parallelism='pmap'
):
  dp = parallel.DataParallel(devices, parallelism)
  model = tiny_model(dp.axis_name, memory_efficient)
  state = dp.put_replicated(
    steps.create_train_state(
      jax.random.key(0), model, tiny_optimizer(), batch['image'].shape[2:]
    )
  )
  step = dp.compile(
    functools.partial(
      steps.train_step,
      spec=steps.TrainSpec(
        num_classes=5, label_smoothing=0.1, class_weights=class_weights
      ),
      axis_name=dp.axis_name,
    )
  )
  n = len(devices)
  local = {k: v.reshape(n, -1, *v.shape[2:]) for k, v in batch.items()}
  rng = dp.put_broadcast(jax.random.key(1))
  with jax.transfer_guard('disallow'):  # no implicit transfers in a step
    state, metrics = step(state, dp.put_batch(local), rng)
  state, metrics = jax.device_get(dp.first_replica((state, metrics)))
  return state.params, state.batch_stats, metrics['loss']


def spmd_step(devices, batch):
  """docs/training.md's example: steps.train_step in one's own jax.jit with
  NamedShardings. No axis name: XLA inserts the cross-device means (BN's
  statistics included) of the global batch."""
  from jax.sharding import Mesh, NamedSharding, PartitionSpec

  mesh = Mesh(np.array(devices), ('data',))
  replicated = NamedSharding(mesh, PartitionSpec())
  split = NamedSharding(mesh, PartitionSpec('data'))
  model = tiny_model(axis_name=None)
  state = steps.create_train_state(
    jax.random.key(0), model, tiny_optimizer(), batch['image'].shape[1:]
  )
  step = jax.jit(
    functools.partial(
      steps.train_step, spec=steps.TrainSpec(num_classes=5), axis_name=None
    ),
    in_shardings=(replicated, split, replicated),
    out_shardings=replicated,
  )
  state = jax.device_put(state, replicated)
  state, metrics = step(state, jax.device_put(batch, split), jax.random.key(1))
  return state.params, state.batch_stats, metrics['loss']


def gradients(devices, batch, check_vma):
  """A conv-BN-dense net's mean cross entropy gradient, averaged over the
  devices by an explicit pmean as the train step takes it.

  Plain Flax layers: the DenseNet's fast layers have custom VJPs, which
  shard_map's check_vma=True refuses outright (their cotangents vary over
  'batch' where the params do not).
  """
  import flax.linen as nn
  from jax.sharding import Mesh, PartitionSpec

  axis_name = 'batch' if len(devices) > 1 else None

  class Net(nn.Module):
    @nn.compact
    def __call__(self, x):
      x = nn.Conv(8, (3, 3))(x)
      x = nn.BatchNorm(use_running_average=False, axis_name=axis_name)(x)
      return nn.Dense(5)(nn.relu(x).mean((1, 2)))

  model = Net()
  variables = model.init(jax.random.key(0), batch['image'][:1])

  def grad(params, batch):
    def loss(params):
      logits, _ = model.apply(
        {'params': params, 'batch_stats': variables['batch_stats']},
        batch['image'],
        mutable=['batch_stats'],
      )
      return steps.cross_entropy(
        logits, jax.nn.one_hot(batch['label'], 5)
      ).mean()

    g = jax.grad(loss)(params)
    return jax.lax.pmean(g, 'batch') if axis_name else g

  if axis_name is None:
    return jax.jit(grad)(variables['params'], batch)
  return jax.jit(
    jax.shard_map(
      grad,
      mesh=Mesh(np.array(devices), ('batch',)),
      in_specs=(PartitionSpec(), PartitionSpec('batch')),
      out_specs=PartitionSpec(),
      check_vma=check_vma,
    )
  )(variables['params'], batch)


def max_difference(a, b) -> float:
  return float(
    max(
      jax.tree_util.tree_leaves(
        jax.tree_util.tree_map(
          lambda x, y: np.abs(np.asarray(x) - np.asarray(y)).max(), a, b
        )
      )
    )
  )


def random_batch():
  rng = np.random.RandomState(0)
  return {
    'image': rng.normal(size=(1, 32, 12, 12, 3)).astype(np.float32),
    'label': (np.arange(32) % 5).reshape(1, 32).astype(np.int32),
  }


def main():
  mode = sys.argv[1]
  out = {}
  if mode == 'step':
    assert jax.device_count() == 8, jax.devices()
    batch = random_batch()
    weights = np.array([0.5, 1.0, 2.0, 1.0, 1.5], np.float32)
    single = one_step(jax.devices()[:1], batch, weights)
    multi = {
      parallelism: one_step(
        jax.devices(),
        batch,
        weights,
        memory_efficient=sys.argv[3:] == ['memory_efficient'],
        parallelism=parallelism,
      )
      for parallelism in ('pmap', 'shard_map')
    }
    names = ('params', 'batch_stats', 'loss')
    for parallelism, result in multi.items():
      for name, a, b in zip(names, single, result):
        out[f'{parallelism}/{name}'] = max_difference(a, b)
    for name, a, b in zip(names, multi['pmap'], multi['shard_map']):
      out[f'pmap_vs_shard_map/{name}'] = max_difference(a, b)
    np.savez(sys.argv[2], **out)
  elif mode == 'spmd':
    batch = {k: v[0] for k, v in random_batch().items()}
    single = spmd_step(jax.devices()[:1], batch)
    multi = spmd_step(jax.devices(), batch)
    for name, a, b in zip(('params', 'batch_stats', 'loss'), single, multi):
      out[name] = max_difference(a, b)
    np.savez(sys.argv[2], **out)
  elif mode == 'vma':
    batch = {k: v[0] for k, v in random_batch().items()}
    single = gradients(jax.devices()[:1], batch, check_vma=False)
    for check_vma in (False, True):
      multi = gradients(jax.devices(), batch, check_vma)
      ratios = jax.tree_util.tree_map(
        lambda m, s: np.asarray(m).ravel() / np.asarray(s).ravel(),
        multi,
        single,
      )
      ratios = np.concatenate(jax.tree_util.tree_leaves(ratios))
      out[f'check_vma={check_vma}/ratio'] = np.median(ratios)
      out[f'check_vma={check_vma}/difference'] = max_difference(multi, single)
    np.savez(sys.argv[2], **out)
  elif mode == 'train':
    import trainutil
    from densenet_flax import training

    data_dir, workdir, path = sys.argv[2:5]
    overrides = dict(
      (key, json.loads(value))
      for key, value in (arg.split('=', 1) for arg in sys.argv[5:])
    )
    summary = training.train_and_evaluate(
      trainutil.tiny_config(data_dir, **{'eval_batch_size': 56, **overrides}),
      workdir,
    )
    from densenet_flax import checkpointing
    from orbax import checkpoint as ocp

    ckpts = checkpointing.Checkpoints(os.path.join(workdir, 'checkpoints'))
    state = ckpts._manager.restore(
      summary['step'], args=ocp.args.Composite(state=ocp.args.StandardRestore())
    )['state']
    ckpts.close()
    flat = jax.tree_util.tree_flatten_with_path(
      {'params': state['params'], 'batch_stats': state['batch_stats']}
    )[0]
    out = {jax.tree_util.keystr(k): np.asarray(v) for k, v in flat}
    out['eval_accuracy'] = summary['eval'].get('accuracy', np.nan)
    out['test_examples'] = summary.get('test', {}).get('num_examples', 0)
    out['step'] = summary['step']
    out['devices'] = jax.local_device_count()
    np.savez(path, **out)


if __name__ == '__main__':
  main()
