"""Starting from pretrained weights (config.init_from) and fine-tuning controls.

The sources are real files written here: a training workdir, a Keras weights
file in the keras.applications release layout, a torchvision state dict.
"""

import functools
import json
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import trainutil
from densenet_flax import config_keys
from densenet_flax import config_checks
from densenet_flax import convert
from densenet_flax import evaluation
from densenet_flax import models
from densenet_flax import optim
from densenet_flax import pretrained
from densenet_flax import steps
from densenet_flax import training
from densenet_flax import recipe
from densenet_flax import resume_policy
from densenet_flax import run_directory


def _leaves_equal(a, b) -> bool:
  la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
  return len(la) == len(lb) and all(
    np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(la, lb)
  )


# --- parsing --------------------------------------------------------------------


@pytest.mark.parametrize(
  'text, kind, location, checkpoint',
  [
    ('keras:DenseNet121', 'keras', 'DenseNet121', 'best'),
    (
      'keras:/w/densenet121_notop.h5',
      'keras',
      '/w/densenet121_notop.h5',
      'best',
    ),
    (
      'torchvision:/w/densenet121.pth',
      'torchvision',
      '/w/densenet121.pth',
      'best',
    ),
    ('workdir:/runs/a', 'workdir', '/runs/a', 'best'),
    ('workdir:/runs/a:latest', 'workdir', '/runs/a', 'latest'),
    ('workdir:/runs/a:1200', 'workdir', '/runs/a', 1200),
  ],
)
def test_init_from_forms(text, kind, location, checkpoint):
  source = pretrained.parse(text)
  assert (source.kind, source.location) == (kind, location)
  if kind == 'workdir':
    assert source.checkpoint == checkpoint
  assert pretrained.parse(str(source)) == source


@pytest.mark.parametrize(
  'text, message',
  [
    ('DenseNet121', 'expected'),
    ('tf:/w/x.h5', 'expected'),
    ('keras:', 'expected'),
    ('keras:DenseNet999', 'neither a keras.applications DenseNet'),
  ],
)
def test_bad_init_from_names_the_key(text, message):
  with pytest.raises(ValueError, match=message) as e:
    pretrained.parse(text)
  assert 'config.init_from' in str(e.value)


@pytest.mark.parametrize(
  'overrides, message',
  [
    (dict(init_from='tf:/x'), 'config.init_from'),
    (
      dict(init_from='keras:DenseNet121', init_from_keras='DenseNet121'),
      'config.init_from_keras',
    ),
    (dict(freeze='denseblock9'), 'config.freeze'),
    (dict(freeze='classifier'), 'config.freeze'),
    (dict(freeze_batch_stats=True), 'config.freeze_batch_stats'),
    (dict(head_lr_multiplier=0.0), 'config.head_lr_multiplier'),
    (dict(layer_lr_decay=1.5), 'config.layer_lr_decay'),
    (dict(ema_decay=1.0), 'config.ema_decay'),
  ],
)
def test_bad_fine_tuning_config_names_the_key(digits_dir, overrides, message):
  with pytest.raises(ValueError, match=message):
    config_checks.validate(trainutil.tiny_config(digits_dir, **overrides))


def test_deprecated_init_from_keras_is_mapped_with_keras_epsilon(
  digits_dir, caplog
):
  config = trainutil.tiny_config(digits_dir, init_from_keras='DenseNet121')
  with caplog.at_level(logging.WARNING):
    resolved = pretrained.resolve_config(config)
  assert 'deprecated' in caplog.text
  assert pretrained.source_of(resolved) == pretrained.parse('keras:DenseNet121')
  assert resolved.model_overrides.bn_epsilon == convert.KERAS_BN_EPSILON
  assert 'bn_epsilon' not in config.model_overrides  # the caller's is untouched
  # A config.json written before epsilons were recorded compares equal.
  old = json.loads(config.to_json())
  assert resume_policy.config_changes(old, resolved) == {}


# --- a workdir as the source ----------------------------------------------------


@pytest.fixture(scope='module')
def fine_tuned(digits_run, digits_dir, tmp_path_factory):
  """digits_run's weights, fine-tuned in RGB with the early stages frozen
  (BN statistics too), a 10x head rate, a layer-wise decay and an EMA."""
  workdir = str(tmp_path_factory.mktemp('fine_tuned'))
  config = trainutil.tiny_config(
    digits_dir,
    image_size=16,
    channels=3,
    **{'augment.resize': 16},
    init_from=f'workdir:{digits_run}:latest',
    freeze='transition1',
    freeze_batch_stats=True,
    head_lr_multiplier=10.0,
    layer_lr_decay=0.8,
    ema_decay=0.9,
  )
  summary = training.train_and_evaluate(config, workdir)
  return workdir, summary


def test_a_workdir_source_initialises_with_the_stem_adapted_to_rgb(
  digits_run, digits_dir
):
  config = trainutil.tiny_config(
    digits_dir,
    image_size=16,
    channels=3,
    **{'augment.resize': 16},
    init_from=f'workdir:{digits_run}:latest',
  )
  _, source = trainutil.final_variables(digits_run)
  variables = pretrained.initial_variables(config)
  gray = source['params']['conv0']['kernel']
  np.testing.assert_array_equal(
    variables['params']['conv0']['kernel'], np.repeat(gray / 3, 3, axis=2)
  )
  rest = lambda v: {k: x for k, x in v['params'].items() if k != 'conv0'}  # noqa: E731
  assert _leaves_equal(rest(variables), rest(source))
  assert _leaves_equal(variables['batch_stats'], source['batch_stats'])


def test_frozen_stages_are_bit_identical_after_fine_tuning(
  digits_run, fine_tuned
):
  workdir, _ = fine_tuned
  _, source = trainutil.final_variables(digits_run)
  _, tuned = trainutil.final_variables(workdir)
  frozen = ('denseblock1', 'transition1')
  for name in frozen:  # params and, with freeze_batch_stats, BN statistics
    assert _leaves_equal(tuned['params'][name], source['params'][name]), name
    assert _leaves_equal(
      tuned['batch_stats'][name], source['batch_stats'][name]
    ), name
  np.testing.assert_array_equal(  # the stem: the adapted source kernel
    tuned['params']['conv0']['kernel'],
    np.repeat(source['params']['conv0']['kernel'] / 3, 3, axis=2),
  )
  for name in (
    'denseblock2',
    'transition2',
    'denseblock3',
    'norm_final',
    'classifier',
  ):
    assert not _leaves_equal(tuned['params'][name], source['params'][name])
  # Frozen stages have no optimizer state (scalars are schedule counts).
  momenta = [
    m for m in jax.tree_util.tree_leaves(tuned['opt_state']) if np.ndim(m)
  ]
  trainable = jax.tree_util.tree_leaves(
    {k: v for k, v in tuned['params'].items() if k not in ('conv0', *frozen)}
  )
  assert sum(np.size(m) for m in momenta) == sum(np.size(p) for p in trainable)


def test_the_source_epsilon_and_init_from_are_in_config_json(fine_tuned):
  workdir, _ = fine_tuned
  config = run_directory.load_config(workdir)
  assert config.model_overrides.bn_epsilon == 1e-5
  assert config.init_from.startswith('workdir:')
  assert recipe.build_model(config).frozen_bn_through == 'transition1'


def test_the_ema_is_evaluated_checkpointed_and_loaded(fine_tuned):
  workdir, summary = fine_tuned
  history = [
    json.loads(line) for line in open(os.path.join(workdir, 'metrics.jsonl'))
  ]
  evals = [row for row in history if 'eval/accuracy' in row]
  assert evals and all('eval/raw_accuracy' in row for row in evals)
  ema_report = evaluation.evaluate(workdir, 'latest', 'test')
  raw_report = evaluation.evaluate(workdir, 'latest', 'test', raw_weights=True)
  assert ema_report['weights'] == 'ema' and raw_report['weights'] == 'trained'
  # Training's last evaluation was of the EMA, to the last digit.
  assert ema_report['accuracy'] == summary['eval']['accuracy']
  assert ema_report['loss'] == summary['eval']['loss']
  assert raw_report['accuracy'] == evals[-1]['eval/raw_accuracy']
  assert raw_report['files'][0].endswith('-raw.json')
  _, ema, _ = run_directory.restore_variables(workdir)
  _, raw, _ = run_directory.restore_variables(workdir, ema=False)
  assert not _leaves_equal(ema['params'], raw['params'])


def test_a_source_with_other_classes_gets_a_new_head(
  digits_run, fer_dirs, caplog
):
  data_dir, manual_dir = fer_dirs
  config = trainutil.tiny_config(
    data_dir,
    dataset='fer2013',
    manual_dir=manual_dir,
    image_size=16,
    train_split='train',
    eval_split='public_test',
    test_split='private_test',
    **{'augment.resize': 16, 'augment.crop': 'random'},
    init_from=f'workdir:{digits_run}',
  )
  config_checks.validate(config)
  with caplog.at_level(logging.INFO):
    variables = pretrained.initial_variables(config)
  assert 'classifier re-initialised (10 classes in the source, 7' in caplog.text
  assert 'classifier' not in variables['params']
  model = recipe.build_model(config)
  fresh = model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 1)))
  merged = steps.merge_variables(fresh, variables)
  assert merged['params']['classifier']['kernel'].shape[-1] == 7
  _, source = trainutil.final_variables(digits_run)
  assert _leaves_equal(
    merged['params']['denseblock2'], source['params']['denseblock2']
  )


def test_a_source_of_another_architecture_is_refused(digits_run, digits_dir):
  config = trainutil.tiny_config(
    digits_dir, model='densenet_40_12', init_from=f'workdir:{digits_run}'
  )
  with pytest.raises(ValueError, match="config.model='densenet_40_12'"):
    pretrained.initial_variables(config)


# --- Keras and torchvision files ----------------------------------------------------


def _keras_release_file(path, seed):
  """(a random DenseNet-121 backbone, `path` holding its weights in the
  layout keras.applications publishes its .h5 files in)."""
  keras = pytest.importorskip('keras')
  from keras.src.legacy.saving import legacy_h5_format
  import h5py

  keras.utils.set_random_seed(seed)
  backbone = keras.applications.DenseNet121(
    weights=None, include_top=False, input_shape=(32, 32, 3)
  )
  with h5py.File(path, 'w') as f:
    legacy_h5_format.save_weights_to_hdf5_group(f, backbone)
  return backbone, str(path)


def test_a_keras_release_file_is_recognised_and_read(tmp_path, digits_dir):
  backbone, path = _keras_release_file(
    tmp_path / 'densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5', 1
  )
  assert pretrained.keras_file_architecture(path) == ('DenseNet121', None)
  keras3 = str(tmp_path / 'backbone.weights.h5')
  backbone.save_weights(keras3)
  assert pretrained.keras_file_architecture(keras3) == ('DenseNet121', None)

  want = convert.adapt_input_channels(convert.from_keras(backbone), 1)
  for weights in (path, keras3):
    config = trainutil.tiny_config(
      digits_dir,
      model='densenet121',
      image_size=32,
      init_from=f'keras:{weights}',
    )
    config.model_overrides = config_keys.base_config().model_overrides
    config_checks.validate(config)
    resolved = pretrained.resolve_config(config)
    assert resolved.model_overrides.bn_epsilon == convert.KERAS_BN_EPSILON
    assert _leaves_equal(pretrained.initial_variables(resolved), want)


def test_a_torchvision_file_initialises_gray_fer_with_a_new_head(
  tmp_path, fer_dirs
):
  torch = pytest.importorskip('torch')
  import torchvision_reference

  reference = torchvision_reference.randomized('densenet121')
  path = str(tmp_path / 'densenet121.pth')
  torch.save(reference.state_dict(), path)
  data_dir, manual_dir = fer_dirs
  config = trainutil.tiny_config(
    data_dir,
    dataset='fer2013',
    manual_dir=manual_dir,
    model='densenet121',
    image_size=32,
    train_split='train',
    eval_split='public_test',
    test_split='private_test',
    **{'augment.crop': 'random'},
    init_from=f'torchvision:{path}',
  )
  config.model_overrides = config_keys.base_config().model_overrides
  config_checks.validate(config)
  variables = pretrained.initial_variables(pretrained.resolve_config(config))
  want = convert.adapt_input_channels(convert.from_torchvision(path), 1)
  want['params'].pop('classifier')  # 1000 ImageNet classes, FER has 7
  assert _leaves_equal(variables, want)


# --- the pieces -------------------------------------------------------------------


def test_stage_learning_rates_scale_the_updates(digits_dir):
  config = trainutil.tiny_config(
    digits_dir,
    freeze='transition1',
    head_lr_multiplier=4.0,
    layer_lr_decay=0.5,
    weight_decay=0.0,
    warmup_epochs=0.0,
  )
  model = recipe.build_model(config)
  params = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))['params']
  grads = jax.tree_util.tree_map(jnp.ones_like, params)
  tx, _ = optim.create_optimizer(config, 8)
  updates, _ = tx.update(grads, tx.init(params), params)
  plain, _ = optim.create_optimizer(
    trainutil.tiny_config(digits_dir, weight_decay=0.0, warmup_epochs=0.0), 8
  )
  base, _ = plain.update(grads, plain.init(params), params)
  # classifier 4x; norm_final 0.5; denseblock3 0.25; transition2 0.125;
  # denseblock2 0.0625; transition1 and before: frozen.
  expected = {
    'classifier': 4.0,
    'norm_final': 0.5,
    'denseblock3': 0.25,
    'transition2': 0.125,
    'denseblock2': 0.0625,
    'transition1': 0.0,
    'denseblock1': 0.0,
    'conv0': 0.0,
  }
  assert set(expected) == set(params)
  for name, factor in expected.items():
    for got, want in zip(
      jax.tree_util.tree_leaves(updates[name]),
      jax.tree_util.tree_leaves(base[name]),
    ):
      np.testing.assert_allclose(got, factor * want, rtol=1e-6)


def test_the_ema_moves_by_one_minus_decay(digits_dir):
  model = models.create_model(
    'densenet_bc_100_12', num_classes=10, block_sizes=(1, 1, 1), growth_rate=4
  )
  state = steps.create_train_state(
    jax.random.key(0), model, optax.sgd(0.1), (8, 8, 1), ema=True
  )
  batch = {
    'image': jax.random.normal(jax.random.key(1), (4, 8, 8, 1)),
    'label': jnp.array([0, 1, 2, 3]),
  }
  step = jax.jit(
    functools.partial(
      steps.train_step, spec=steps.TrainSpec(num_classes=10, ema_decay=0.75)
    )
  )
  new, _ = step(state, batch, jax.random.key(2))
  for avg, before, after in zip(
    jax.tree_util.tree_leaves(new.ema),
    jax.tree_util.tree_leaves(
      {'params': state.params, 'batch_stats': state.batch_stats}
    ),
    jax.tree_util.tree_leaves(
      {'params': new.params, 'batch_stats': new.batch_stats}
    ),
  ):
    np.testing.assert_allclose(
      avg, 0.75 * before + 0.25 * after, rtol=1e-6, atol=1e-7
    )


def test_frozen_stages_keep_their_bn_statistics_in_training():
  model = models.create_model(
    'densenet_bc_100_12',
    num_classes=10,
    block_sizes=(1, 1, 1),
    growth_rate=4,
    frozen_bn_through='denseblock2',
  )
  variables = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))
  x = jax.random.normal(jax.random.key(1), (4, 8, 8, 1)) * 3 + 1
  _, updates = model.apply(variables, x, train=True, mutable=['batch_stats'])
  stats = variables['batch_stats']
  for name in ('denseblock1', 'transition1', 'denseblock2'):
    assert _leaves_equal(updates['batch_stats'][name], stats[name]), name
  for name in ('transition2', 'denseblock3', 'norm_final'):
    assert not _leaves_equal(updates['batch_stats'][name], stats[name]), name
  # A frozen stage computes what inference computes.
  frozen_all = models.create_model(
    'densenet_bc_100_12',
    num_classes=10,
    block_sizes=(1, 1, 1),
    growth_rate=4,
    frozen_bn_through='norm_final',
  )
  np.testing.assert_allclose(
    frozen_all.apply(variables, x, train=True, mutable=['batch_stats'])[0],
    frozen_all.apply(variables, x, train=False),
    rtol=1e-5,
    atol=1e-6,
  )


# --- tiny DenseNet-121 runs from each file source (second tier) --------------------


def _densenet121_digits(digits_dir, init_from):
  config = trainutil.tiny_config(
    digits_dir,
    model='densenet121',
    image_size=32,
    num_epochs=1,
    init_from=init_from,
    freeze='denseblock1',
    head_lr_multiplier=10.0,
  )
  config.model_overrides = config_keys.base_config().model_overrides
  config.augment.resize = 32
  return config


@pytest.mark.slow
def test_keras_initialised_training_and_evaluate_agree(tmp_path, digits_dir):
  backbone, path = _keras_release_file(tmp_path / 'densenet121_notop.h5', 2)
  workdir = str(tmp_path / 'run')
  summary = training.train_and_evaluate(
    _densenet121_digits(digits_dir, f'keras:{path}'), workdir
  )
  config = run_directory.load_config(workdir)
  assert config.model_overrides.bn_epsilon == convert.KERAS_BN_EPSILON
  report = evaluation.evaluate(workdir, 'latest', 'test')
  assert report['accuracy'] == summary['eval']['accuracy']
  assert report['loss'] == summary['eval']['loss']
  _, tuned = trainutil.final_variables(workdir)
  source = convert.adapt_input_channels(convert.from_keras(backbone), 1)
  assert _leaves_equal(
    tuned['params']['denseblock1'], source['params']['denseblock1']
  )


@pytest.mark.slow
def test_a_torchvision_initialised_run_trains_and_evaluates(
  tmp_path, digits_dir
):
  torch = pytest.importorskip('torch')
  import torchvision_reference

  path = str(tmp_path / 'densenet121.pth')
  torch.save(torchvision_reference.randomized('densenet121').state_dict(), path)
  workdir = str(tmp_path / 'run')
  summary = training.train_and_evaluate(
    _densenet121_digits(digits_dir, f'torchvision:{path}'), workdir
  )
  report = evaluation.evaluate(workdir, 'latest', 'test')
  assert report['accuracy'] == summary['eval']['accuracy']
  _, tuned = trainutil.final_variables(workdir)
  source = convert.adapt_input_channels(convert.from_torchvision(path), 1)
  np.testing.assert_array_equal(
    tuned['params']['conv0']['kernel'], source['params']['conv0']['kernel']
  )
  assert tuned['params']['classifier']['kernel'].shape == (1024, 10)


@pytest.mark.slow  # second tier: keeps the default under 10 min
def test_resumes_need_no_source_and_refuse_layout_changes_untouched(
  digits_dir, tmp_path
):
  """A fine-tuning run stopped early resumes with its source deleted; an EMA
  switched on at resume is refused, allowed or not, and nothing is set aside."""
  import shutil

  from densenet_flax import checkpointing

  source, run = str(tmp_path / 'source'), str(tmp_path / 'run')
  training.train_and_evaluate(
    trainutil.tiny_config(digits_dir, num_epochs=1), source
  )
  tune = dict(init_from=f'workdir:{source}', freeze='denseblock1')
  first = training.train_and_evaluate(
    trainutil.tiny_config(digits_dir, stop_after_steps=3, **tune), run
  )
  assert first['interrupted'] and first['step'] == 3
  shutil.rmtree(source)
  saved = sorted(os.listdir(os.path.join(run, 'checkpoints')))
  with pytest.raises(
    resume_policy.ConfigChangeError, match='ema_decay: 0.0 -> 0.9'
  ):
    training.train_and_evaluate(
      trainutil.tiny_config(digits_dir, ema_decay=0.9, **tune), run
    )
  with pytest.raises(
    checkpointing.CheckpointMismatchError, match='another layout'
  ):
    training.train_and_evaluate(
      trainutil.tiny_config(
        digits_dir, ema_decay=0.9, allow_config_change=True, **tune
      ),
      run,
    )
  assert sorted(os.listdir(os.path.join(run, 'checkpoints'))) == saved
  assert not os.path.exists(os.path.join(run, 'checkpoints_set_aside'))
  summary = training.train_and_evaluate(
    trainutil.tiny_config(digits_dir, **tune), run
  )
  assert (
    summary['step'] == summary['total_steps'] and not summary['interrupted']
  )
  # Without an EMA the saved state is the one checkpoints had before EMAs.
  assert set(steps.TrainState.__dataclass_fields__) >= {
    'params',
    'opt_state',
    'batch_stats',
  }
  assert 'ema' not in steps.TrainState.__dataclass_fields__
