"""Parity with keras.applications DenseNets: the independent implementation.

Random-init Keras models (weights=None; no download) with BN moving statistics
moved by training-mode passes, converted; our logits must equal Keras's.
"""

import jax
import numpy as np
import pytest

from densenet_flax import convert

keras = pytest.importorskip('keras')

SIZE = 64


# DenseNet-121 in the default tier; the larger two in the second (-m slow).
@pytest.fixture(
  scope='module',
  params=[
    'DenseNet121',
    pytest.param('DenseNet169', marks=pytest.mark.slow),
    pytest.param('DenseNet201', marks=pytest.mark.slow),
  ],
)
def keras_model(request):
  keras.utils.set_random_seed(0)
  model = getattr(keras.applications, request.param)(
    weights=None,
    input_shape=(SIZE, SIZE, 3),
    classes=10,
    classifier_activation=None,
  )
  rng = np.random.RandomState(1)
  for _ in range(3):  # non-trivial moving averages
    model(rng.normal(size=(4, SIZE, SIZE, 3)).astype(np.float32), training=True)
  return model


def test_inference_logits_match_keras(keras_model):
  variables = convert.from_keras(keras_model)
  model = convert.model_for_keras(keras_model)
  moving_var = keras_model.get_layer('conv4_block1_0_bn').moving_variance
  assert np.abs(moving_var.numpy() - 1.0).max() > 1e-3  # stats really moved
  x = (
    np.random.RandomState(2).normal(size=(3, SIZE, SIZE, 3)).astype(np.float32)
  )
  ours = jax.jit(model.apply)(variables, x)
  theirs = keras_model(x, training=False).numpy()
  assert ours.shape == theirs.shape == (3, 10)
  assert np.abs(theirs).max() > 1e-2
  np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)


def test_training_mode_and_statistic_updates_match_keras(keras_model):
  """Batch statistics, and the moving-average update with Keras's momentum."""
  variables = convert.from_keras(keras_model)
  model = convert.model_for_keras(keras_model, bn_momentum=0.99)
  x = (
    np.random.RandomState(3).normal(size=(4, SIZE, SIZE, 3)).astype(np.float32)
  )
  ours, updates = jax.jit(
    lambda v, x: model.apply(v, x, train=True, mutable=['batch_stats'])
  )(variables, x)
  theirs = keras_model(x, training=True).numpy()
  np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)
  after = convert.from_keras(keras_model)['batch_stats']
  for path in [
    ('norm0',),
    ('denseblock2', 'denselayer3', 'norm2'),
    ('transition3', 'norm'),
    ('norm_final',),
  ]:
    got, want = updates['batch_stats'], after
    for key in path:
      got, want = got[key], want[key]
    np.testing.assert_allclose(got['mean'], want['mean'], atol=1e-5, rtol=0)
    np.testing.assert_allclose(got['var'], want['var'], atol=1e-4, rtol=1e-4)


def test_architecture_is_recognised(keras_model):
  name, num_classes = convert.keras_architecture(keras_model)
  assert name == keras_model.name.lower()
  assert num_classes == 10
  model = convert.model_for_keras(keras_model)
  assert model.bn_epsilon == convert.KERAS_BN_EPSILON == 1.001e-5


def test_without_top_gives_backbone_variables():
  backbone = keras.applications.DenseNet121(
    weights=None, include_top=False, input_shape=(SIZE, SIZE, 1)
  )
  variables = convert.from_keras(backbone)
  assert 'classifier' not in variables['params']
  assert variables['params']['conv0']['kernel'].shape == (7, 7, 1, 64)
  assert convert.model_for_keras(backbone, num_classes=7).num_classes == 7


def test_a_keras_model_that_is_not_a_densenet_is_refused():
  other = keras.Sequential(
    [keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3, name='conv')]
  )
  with pytest.raises(ValueError, match='not a keras.applications DenseNet'):
    convert.from_keras(other)
