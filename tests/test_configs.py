"""Every recipe in configs/ loads and passes validation (no data is read)."""

import glob
import os

import pytest

from densenet_flax import config_keys
from densenet_flax import config_checks
from densenet_flax import pretrained

CONFIGS = sorted(
  glob.glob(
    os.path.join(
      os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
      'configs',
      '*.py',
    )
  )
)


def test_the_recipes_are_found():
  names = {os.path.basename(p) for p in CONFIGS}
  assert {
    'default.py',
    'fer2013.py',
    'ferplus.py',
    'fer2013_densenet121_finetune.py',
  } <= names


@pytest.mark.parametrize('path', CONFIGS, ids=os.path.basename)
def test_a_recipe_is_valid(path, tmp_path):
  config = config_keys.load_config_file(path)
  if config.dataset == 'image_folder':  # the classes come from its root
    import fakedata

    fakedata.write_image_folder(tmp_path)
    config.manual_dir = str(tmp_path)
  config_checks.validate(config)
  assert set(config) == set(config_keys.base_config())  # no stray keys


def test_the_face_recipes_select_on_validation_and_test_once():
  for name in ('rafdb.py', 'affectnet.py', 'image_folder.py'):
    config = config_keys.load_config_file(
      [p for p in CONFIGS if p.endswith(os.sep + name)][0]
    )
    assert config.eval_split == 'validation' and config.test_split == 'test'
    assert config.select_on == 'validation'
    assert (config.image_size, config.channels) == (224, 3)
    assert pretrained.source_of(config) == pretrained.parse('keras:DenseNet121')


def test_the_fine_tuning_recipe_starts_from_imagenet_densenet121():
  config = config_keys.load_config_file(
    [p for p in CONFIGS if p.endswith('fer2013_densenet121_finetune.py')][0]
  )
  assert pretrained.source_of(config) == pretrained.parse('keras:DenseNet121')
  resolved = pretrained.resolve_config(config)
  assert resolved.model_overrides.bn_epsilon == 1.001e-5


def test_the_reader_implements_every_label_mode_of_the_config():
  """config_keys.LABEL_MODES is the one list of label modes: the FER+
  reader makes a target in each, and refuses any other."""
  import numpy as np

  from densenet_flax.data import fer_sources

  votes = np.array([6, 4, 0, 0, 0, 0, 0, 0, 0, 0])
  for mode in config_keys.LABEL_MODES:
    assert fer_sources.ferplus_target(votes, mode) is not None, mode
  with pytest.raises(ValueError, match='soft'):
    fer_sources.ferplus_target(votes, 'soft')
