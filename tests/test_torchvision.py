"""torchvision weights -> Flax: logits equal torchvision's, for all four.

The reference is tests/torchvision_reference.py: torchvision's densenet.py
layout rebuilt from torch.nn (torchvision itself does not import here), with
random weights and random BN statistics.
"""

import jax
import numpy as np
import pytest

torch = pytest.importorskip('torch')

from densenet_flax import convert  # noqa: E402

import torchvision_reference  # noqa: E402


def torch_logits(model, images):
  with torch.no_grad():
    return model(torch.from_numpy(images.transpose(0, 3, 1, 2))).numpy()


def images(channels=3, seed=0):
  return (
    np.random.RandomState(seed)
    .normal(size=(2, 64, 64, channels))
    .astype(np.float32)
  )


def apply(model, variables, x):
  return np.asarray(
    jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
  )


@pytest.mark.parametrize(
  'name',
  [
    'densenet121',
    # The larger three run in the second tier (.ci/run runs it every time).
    pytest.param('densenet161', marks=pytest.mark.slow),
    pytest.param('densenet169', marks=pytest.mark.slow),
    pytest.param('densenet201', marks=pytest.mark.slow),
  ],
)
def test_logits_equal_torchvision(name):
  reference = torchvision_reference.randomized(name, num_classes=7)
  x = images()
  want = torch_logits(reference, x)
  state = reference.state_dict()
  model = convert.model_for_torchvision(state)
  assert model.num_classes == 7 and model.bn_epsilon == 1e-5
  got = apply(model, convert.from_torchvision(state), x)
  assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max(), (
    np.abs(got - want).max(),
    np.abs(want).max(),
  )


def test_a_pth_file_with_module_prefix_and_old_names(tmp_path):
  reference = torchvision_reference.randomized('densenet121')
  state = {}
  for key, value in reference.state_dict().items():
    # DataParallel's prefix, and the names of torchvision's oldest files.
    key = key.replace('.norm1.', '.norm.1.').replace('.conv2.', '.conv.2.')
    state['module.' + key] = value
  path = tmp_path / 'densenet121.pth'
  torch.save(state, path)
  x = images()
  model = convert.model_for_torchvision(str(path))
  got = apply(model, convert.from_torchvision(str(path)), x)
  want = torch_logits(reference, x)
  np.testing.assert_allclose(got, want, atol=1e-4 * np.abs(want).max())


def test_weights_without_a_classifier_give_a_backbone():
  state = torchvision_reference.randomized('densenet121').state_dict()
  del state['classifier.weight'], state['classifier.bias']
  variables = convert.from_torchvision(state)
  assert 'classifier' not in variables['params']
  assert convert.model_for_torchvision(state, num_classes=7).num_classes == 7


def test_unknown_weights_and_architectures_are_named():
  state = torchvision_reference.randomized('densenet121').state_dict()
  state['features.extra.weight'] = torch.zeros(3)
  with pytest.raises(
    ValueError, match="'features.extra.weight' has no counterpart"
  ):
    convert.from_torchvision(state)
  with pytest.raises(ValueError, match='Not a torchvision DenseNet'):
    convert.from_torchvision({'fc.weight': np.zeros((2, 2))})


@pytest.mark.slow  # second tier: keeps the default under 10 min
def test_adapting_rgb_weights_to_grayscale_keeps_the_logits():
  reference = torchvision_reference.randomized('densenet121', num_classes=7)
  rgb_variables = convert.from_torchvision(reference.state_dict())
  rgb_model = convert.model_for_torchvision(reference.state_dict())
  gray = images(channels=1)
  want = rgb_model.apply(rgb_variables, np.repeat(gray, 3, -1), train=False)
  gray_variables = convert.adapt_input_channels(rgb_variables, 1)
  assert gray_variables['params']['conv0']['kernel'].shape[2] == 1
  got = rgb_model.apply(gray_variables, gray, train=False)
  np.testing.assert_allclose(got, want, atol=1e-4 * np.abs(want).max())
  back = convert.adapt_input_channels(gray_variables, 3)
  again = rgb_model.apply(back, np.repeat(gray, 3, -1), train=False)
  np.testing.assert_allclose(again, want, atol=1e-4 * np.abs(want).max())
  with pytest.raises(ValueError, match='Cannot adapt a 3-channel stem to 2'):
    convert.adapt_input_channels(rgb_variables, 2)
