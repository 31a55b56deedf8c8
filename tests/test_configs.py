"""Every recipe in configs/ loads and passes validation (no data is read)."""

import glob
import os

import pytest

from densenet_flax import config as config_lib
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
def test_a_recipe_is_valid(path):
  config = config_lib.load_config_file(path)
  config_checks.validate(config)
  assert set(config) == set(config_lib.base_config())  # no stray keys


def test_the_fine_tuning_recipe_starts_from_imagenet_densenet121():
  config = config_lib.load_config_file(
    [p for p in CONFIGS if p.endswith('fer2013_densenet121_finetune.py')][0]
  )
  assert pretrained.source_of(config) == pretrained.parse('keras:DenseNet121')
  resolved = pretrained.resolve_config(config)
  assert resolved.model_overrides.bn_epsilon == 1.001e-5


def test_config_declares_the_readers_label_modes():
  """config.py imports nothing from the package, so it spells out the FER+
  label modes; they must stay those the reader implements."""
  from densenet_flax.data import fer_sources

  assert config_lib.LABEL_MODES == fer_sources.FERPLUS_LABEL_MODES
