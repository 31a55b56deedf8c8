"""Tiny, fast training configs on the digits set, for the training tests,
and a tiny color model for the inference tests."""

import os

from densenet_flax import config_keys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(data_dir, **overrides):
  """DenseNet-BC with three 1-layer blocks on 8x8 digits; 8 steps per epoch."""
  config = config_keys.load_config_file(
    os.path.join(REPO, 'configs', 'default.py')
  )
  config.data_dir = data_dir
  config.model_overrides.block_sizes = (1, 1, 1)
  config.model_overrides.growth_rate = 4
  config.train_split = 'train[:256]'
  config.image_size = 8
  config.augment.resize = 0
  config.augment.crop_padding = 1
  config.augment.rotation = 5.0
  config.batch_size = 32
  config.eval_batch_size = 50  # 359 test examples: a padded last batch
  config.num_epochs = 2
  config.warmup_epochs = 0.5
  config.log_every_steps = 4
  config.checkpoint_every_steps = 5
  config.progress_bar = False
  config.compilation_cache_dir = ''  # tests leave no files behind
  for key, value in overrides.items():
    target = config
    *parents, leaf = key.split('.')
    for parent in parents:
      target = target[parent]
    target[leaf] = value
  return config


def write_config_file(path, data_dir, **overrides):
  """A config file (for subprocess runs) that returns tiny_config(...)."""
  path.write_text(
    'import sys\n'
    f'sys.path.insert(0, {os.path.join(REPO, "tests")!r})\n'
    'import trainutil\n\n'
    'def get_config():\n'
    f'  return trainutil.tiny_config({data_dir!r}, **{overrides!r})\n'
  )
  return str(path)


def final_variables(workdir):
  """(latest step, {params, batch_stats, opt_state}) as host arrays.

  Read in the structure Orbax recorded (no model built), so a checkpoint
  written by several processes reads here in one.
  """
  import jax
  from densenet_flax import checkpointing

  ckpts = checkpointing.Checkpoints(os.path.join(workdir, 'checkpoints'))
  step = ckpts.latest_step()
  state = jax.device_get(ckpts.read(step))
  ckpts.close()
  return step, {
    'params': state['params'],
    'batch_stats': state['batch_stats'],
    'opt_state': state['opt_state'],
  }


def sigterm_at_batch(monkeypatch, index):
  """A context in which the training pipeline sends this process SIGTERM
  as the loop draws batch `index` (of this invocation), mid-epoch."""
  import contextlib
  import signal

  from densenet_flax.data import pipeline

  batches = pipeline.InputPipeline.train_batches

  def signalled(self, start_step=0):
    for i, batch in enumerate(batches(self, start_step)):
      if i == index:
        os.kill(os.getpid(), signal.SIGTERM)
      yield batch

  @contextlib.contextmanager
  def patched():
    with monkeypatch.context() as patch:
      patch.setattr(pipeline.InputPipeline, 'train_batches', signalled)
      yield

  return patched()


def assert_same_checkpoints(workdirs, step, keys):
  """The checkpoints at `step` of two workdirs hold the same bits under
  each of `keys` (e.g. params, batch_stats, opt_state)."""
  import jax
  import numpy as np

  from densenet_flax import checkpointing

  ckpts = [
    checkpointing.Checkpoints(os.path.join(w, 'checkpoints')) for w in workdirs
  ]
  want, got = (jax.device_get(c.read(step)) for c in ckpts)
  for c in ckpts:
    c.close()
  assert set(keys) <= set(want) and set(want) == set(got)
  for key in keys:
    leaves_want = jax.tree_util.tree_leaves(want[key])
    leaves_got = jax.tree_util.tree_leaves(got[key])
    assert len(leaves_want) == len(leaves_got) > 0
    for x, y in zip(leaves_want, leaves_got):
      np.testing.assert_array_equal(x, y, err_msg=key)


def color_classifier(dataset, size=32):
  """A tiny DenseNet-121-shaped Classifier for `dataset` at size x size RGB
  (ImageNet mean/std), random weights."""
  import jax
  import jax.numpy as jnp

  from densenet_flax import recipe
  from densenet_flax.inference import Classifier

  config = config_keys.base_config()
  config.dataset, config.model = dataset, 'densenet121'
  config.model_overrides.block_sizes = (1, 1, 1, 1)
  config.model_overrides.growth_rate = 4
  config.model_overrides.num_init_features = 8
  config.image_size, config.channels = size, 3
  config.augment.resize, config.augment.crop = size, 'pad'
  model = recipe.build_model(config)
  variables = model.init(
    jax.random.key(0), jnp.zeros((1, size, size, 3)), train=False
  )
  return Classifier(
    model, variables, config, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
  )
