"""Faces in real photographs (scikit-image ships them) -> one entry each."""

import numpy as np
import pytest

cv2 = pytest.importorskip('cv2')
skimage_data = pytest.importorskip('skimage.data')

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from densenet_flax import config as config_lib  # noqa: E402
from densenet_flax import workdir as workdir_lib  # noqa: E402
from densenet_flax.faces import FaceEmotionDetector  # noqa: E402
from densenet_flax.inference import Classifier  # noqa: E402
from densenet_flax.data import fer_sources  # noqa: E402


@pytest.fixture(scope='module')
def fer_classifier():
  """A small fer_densenet with random weights: the mechanics, not accuracy."""
  config = config_lib.base_config()
  config.dataset, config.model = 'fer2013', 'fer_densenet'
  config.model_overrides.block_sizes = (1, 1)
  config.model_overrides.growth_rate = 4
  config.image_size, config.channels = 44, 1
  config.augment.crop = 'random'
  model = workdir_lib.build_model(config)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 44, 44, 1)),
                         train=False)
  return Classifier(model, variables, config, [0.5], [0.25])


def test_the_astronaut_has_one_face(fer_classifier):
  image = skimage_data.astronaut()  # 512x512 RGB, one face
  found = FaceEmotionDetector(fer_classifier).detect(image)
  assert len(found) == 1
  face = found[0]
  assert set(face) == {'box', 'emotions', 'label', 'score'}
  x, y, w, h = face['box']
  assert all(isinstance(v, int) for v in face['box'])
  # Eileen Collins' face: around x 180-270, y 70-160 in the photograph.
  assert 150 < x + w / 2 < 300 and 60 < y + h / 2 < 200 and 60 < w < 200
  assert list(face['emotions']) == list(fer_sources.EMOTIONS)
  assert sum(face['emotions'].values()) == pytest.approx(1, abs=1e-5)
  assert face['label'] == max(face['emotions'], key=face['emotions'].get)
  assert face['score'] == face['emotions'][face['label']]


def test_two_faces_give_two_entries_and_none_gives_none(fer_classifier):
  detector = FaceEmotionDetector(fer_classifier)
  face = skimage_data.astronaut()[:300, 100:350]
  pair = np.concatenate([face, face[:, ::-1]], axis=1)
  found = detector.detect(pair)
  assert len(found) == 2
  assert found[0]['box'][0] < 250 <= found[1]['box'][0]
  assert detector.detect(np.full((200, 300, 3), 128, np.uint8)) == []
  assert detector.detect(skimage_data.coffee()) == []


def test_face_crops_are_the_stored_size_and_aligned(fer_classifier):
  detector = FaceEmotionDetector(fer_classifier)
  gray = cv2.cvtColor(skimage_data.astronaut(), cv2.COLOR_RGB2GRAY)
  boxes = detector.find_faces(gray)
  crops = detector.face_crops(gray, boxes)
  assert crops.shape == (1, 48, 48) and crops.dtype == np.uint8
  assert abs(detector._eye_angle(gray, boxes[0])) < 15
