"""Run by test_multidevice.py in a subprocess with N fake CPU devices.

python multidevice_check.py step OUT.npz [memory_efficient]
    # one step: 8 devices vs 1 (the 8 in memory-efficient mode, if given)
python multidevice_check.py train DATA_DIR WORKDIR OUT.npz   # whole loop
"""

import functools
import os
import sys

import jax
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from densenet_flax import models  # noqa: E402
from densenet_flax import parallel  # noqa: E402
from densenet_flax import steps  # noqa: E402


def one_step(devices, batch, class_weights, memory_efficient=False):
  dp = parallel.DataParallel(devices)
  model = models.create_model(
    'densenet_bc_100_12',
    num_classes=5,
    block_sizes=(2, 2),
    growth_rate=4,
    bn_axis_name=dp.axis_name,
    memory_efficient=memory_efficient,
  )
  tx = optax.chain(
    optax.add_decayed_weights(1e-4), optax.sgd(0.1, momentum=0.9, nesterov=True)
  )
  state = dp.put_replicated(
    steps.create_train_state(
      jax.random.key(0), model, tx, batch['image'].shape[2:]
    )
  )
  step = dp.compile(
    functools.partial(
      steps.train_step,
      num_classes=5,
      axis_name=dp.axis_name,
      label_smoothing=0.1,
      class_weights=class_weights,
    ),
    num_args=3,
    broadcast=(2,),
  )
  n = len(devices)
  local = {k: v.reshape(n, -1, *v.shape[2:]) for k, v in batch.items()}
  rng = jax.random.key(1)
  with jax.transfer_guard('disallow'):  # no implicit transfers in a step
    state, metrics = step(state, dp.put_batch(local), rng)
  state, metrics = jax.device_get(dp.first_replica((state, metrics)))
  return state.params, state.batch_stats, metrics['loss']


def main():
  mode = sys.argv[1]
  out = {}
  if mode == 'step':
    assert jax.device_count() == 8, jax.devices()
    rng = np.random.RandomState(0)
    batch = {
      'image': rng.normal(size=(1, 32, 12, 12, 3)).astype(np.float32),
      'label': (np.arange(32) % 5).reshape(1, 32).astype(np.int32),
    }
    weights = np.array([0.5, 1.0, 2.0, 1.0, 1.5], np.float32)
    single = one_step(jax.devices()[:1], batch, weights)
    multi = one_step(
      jax.devices(),
      batch,
      weights,
      memory_efficient=sys.argv[3:] == ['memory_efficient'],
    )
    for name, a, b in zip(('params', 'batch_stats', 'loss'), single, multi):
      diffs = jax.tree_util.tree_leaves(
        jax.tree_util.tree_map(lambda x, y: np.abs(x - y).max(), a, b)
      )
      out[name] = max(diffs)
    np.savez(sys.argv[2], **out)
  elif mode == 'train':
    import trainutil
    from densenet_flax import train as train_lib

    data_dir, workdir, path = sys.argv[2:5]
    summary = train_lib.train_and_evaluate(
      trainutil.tiny_config(data_dir, eval_batch_size=56), workdir
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
    out['eval_accuracy'] = summary['eval']['accuracy']
    out['test_examples'] = summary['test']['num_examples']
    out['devices'] = jax.local_device_count()
    np.savez(path, **out)


if __name__ == '__main__':
  main()
