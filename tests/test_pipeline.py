"""The tf.data pipeline: exact evaluation, determinism, restarts, layout."""

import collections
import math

import ml_collections
import numpy as np
import pytest

tf = pytest.importorskip('tensorflow')

from densenet_flax.data import augment  # noqa: E402
from densenet_flax.data import pipeline  # noqa: E402


def make_config(data_dir, dataset='fer2013', manual_dir='', **overrides):
  config = ml_collections.ConfigDict(
    dict(
      dataset=dataset,
      data_dir=data_dir,
      manual_dir=manual_dir,
      batch_size=8,
      eval_batch_size=8,
      seed=0,
      image_size=44,
      channels=1,
      augment=dict(
        crop='random', crop_padding=0, resize=0, flip=True, rotation=10.0
      ),
    )
  )
  augment_overrides = overrides.pop('augment', {})
  config.update(overrides)
  config.augment.update(augment_overrides)
  return config


@pytest.fixture
def fer_config(fer_dirs):
  return lambda **kw: make_config(fer_dirs[0], manual_dir=fer_dirs[1], **kw)


def fingerprints(batches):
  """(label, rounded image sum) of every real example in eval batches."""
  seen = collections.Counter()
  for batch in batches:
    mask = batch['mask'].reshape(-1)
    labels = batch['label'].reshape(-1)[mask]
    images = batch['image'].reshape(len(mask), -1)[mask]
    for label, image in zip(labels, images):
      seen[(int(label), round(float(image.sum()), 2))] += 1
  return seen


@pytest.mark.parametrize(
  'eval_batch_size,devices', [(8, 1), (12, 4), (5, 1), (64, 2)]
)
def test_eval_visits_every_example_once(
  fer_config, fer_rows, eval_batch_size, devices
):
  split = 'public_test'
  size = sum(u == 'PublicTest' for _, _, u in fer_rows)  # 14
  reference = fingerprints(
    pipeline.InputPipeline(
      fer_config(eval_batch_size=size), num_devices=1
    ).eval_batches(split)
  )
  assert sum(reference.values()) == size
  data = pipeline.InputPipeline(
    fer_config(eval_batch_size=eval_batch_size), num_devices=devices
  )
  batches = list(data.eval_batches(split))
  assert (
    len(batches)
    == data.num_eval_batches(split)
    == math.ceil(size / eval_batch_size)
  )
  for batch in batches:
    assert batch['image'].shape == (
      devices,
      eval_batch_size // devices,
      44,
      44,
      1,
    )
    assert (
      batch['mask'].shape
      == batch['label'].shape
      == (devices, eval_batch_size // devices)
    )
  assert sum(b['mask'].sum() for b in batches) == size
  assert fingerprints(batches) == reference
  labels = collections.Counter(l for l, _, u in fer_rows if u == 'PublicTest')
  assert (
    collections.Counter(k[0] for k in fingerprints(batches).elements())
    == labels
  )


def test_eval_shards_over_processes_cover_the_split_once(fer_config):
  split = 'private_test'
  whole = fingerprints(
    pipeline.InputPipeline(
      fer_config(eval_batch_size=6), num_devices=1
    ).eval_batches(split)
  )
  union = collections.Counter()
  counts = set()
  for index in range(3):
    data = pipeline.InputPipeline(
      fer_config(batch_size=6, eval_batch_size=6),
      num_devices=1,
      process_index=index,
      process_count=3,
    )
    batches = list(data.eval_batches(split))
    counts.add(len(batches))
    union += fingerprints(batches)
  assert union == whole
  assert len(counts) == 1  # every process runs the same number of eval steps


def test_ten_crop_layout_and_centre_crop(fer_config):
  data = pipeline.InputPipeline(fer_config(eval_batch_size=4), num_devices=2)
  crops = next(data.eval_batches('public_test', tta='ten_crop'))
  single = next(data.eval_batches('public_test'))
  assert crops['image'].shape == (2, 2, 10, 44, 44, 1)
  np.testing.assert_allclose(
    crops['image'][:, :, 4], single['image'], atol=1e-6
  )
  # Crops 5-9 mirror crops 0-4.
  np.testing.assert_allclose(
    crops['image'][:, :, 5:], crops['image'][:, :, :5, :, ::-1], atol=1e-6
  )
  with pytest.raises(ValueError, match='ten_crop needs crops smaller'):
    next(
      pipeline.InputPipeline(
        fer_config(augment=dict(crop='none'), image_size=48)
      ).eval_batches('public_test', tta='ten_crop')
    )


def first_batches(config, n=3, start_step=0, **kw):
  it = pipeline.InputPipeline(config, **kw).train_batches(start_step)
  return [next(it) for _ in range(n)]


def test_same_seed_same_batches_other_seed_other_order(fer_config):
  a = first_batches(fer_config())
  b = first_batches(fer_config())
  c = first_batches(fer_config(seed=1))
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x['image'], y['image'])
    np.testing.assert_array_equal(x['label'], y['label'])
  assert not np.array_equal(a[0]['label'], c[0]['label']) or not np.array_equal(
    a[0]['image'], c[0]['image']
  )


def test_restart_at_a_step_continues_exactly(fer_config):
  config = fer_config()
  data = pipeline.InputPipeline(config)
  steps = data.steps_per_epoch
  assert steps == 3  # 28 training examples, batches of 8
  uninterrupted = first_batches(config, n=2 * steps + 3)
  for start in (3, steps, steps + 2):  # mid-epoch and across the boundary
    resumed = first_batches(config, n=4, start_step=start)
    for x, y in zip(uninterrupted[start : start + 4], resumed):
      np.testing.assert_array_equal(x['image'], y['image'])
      np.testing.assert_array_equal(x['label'], y['label'])
  # Each epoch is a permutation: every example once, in a new order.
  # Each epoch is a new permutation (the 4 left over differ between epochs).
  epoch0, epoch1 = [
    np.concatenate(
      [b['label'].reshape(-1) for b in uninterrupted[e * 3 : e * 3 + 3]]
    )
    for e in (0, 1)
  ]
  assert list(epoch0) != list(epoch1)


def test_train_batches_are_shaped_for_devices(fer_config):
  batch = first_batches(fer_config(), n=1, num_devices=4)[0]
  assert batch['image'].shape == (4, 2, 44, 44, 1)
  assert batch['image'].dtype == np.float32
  assert batch['label'].shape == (4, 2) and batch['label'].dtype == np.int32


def test_process_shards_are_disjoint(fer_config):
  labels = []
  for index in range(2):
    data = pipeline.InputPipeline(
      fer_config(), num_devices=1, process_index=index, process_count=2
    )
    assert data.local_batch == 4
    images = data._arrays(data._process_train_split)[0]
    labels.append({img.tobytes() for img in images})
  assert not labels[0] & labels[1]
  assert len(labels[0] | labels[1]) == 28


def test_batch_not_divisible_by_devices_names_the_key(fer_config):
  with pytest.raises(
    ValueError,
    match=r'config.batch_size=10: expected a multiple of the 4 devices',
  ):
    pipeline.InputPipeline(fer_config(batch_size=10), num_devices=4)
  with pytest.raises(ValueError, match='config.eval_batch_size=6'):
    pipeline.InputPipeline(fer_config(eval_batch_size=6), num_devices=4)


def test_grayscale_to_rgb_and_normalisation(digits_dir):
  config = make_config(
    digits_dir,
    dataset='digits',
    image_size=32,
    channels=3,
    augment=dict(
      crop='pad', crop_padding=4, resize=32, flip=False, rotation=0.0
    ),
  )
  data = pipeline.InputPipeline(config, num_devices=1)
  batch = next(data.eval_batches('test'))
  image = batch['image'][0]
  assert image.shape == (8, 32, 32, 3)
  np.testing.assert_array_equal(image[..., 0], image[..., 2])
  # Normalised by the training split's statistics: about zero mean, unit std.
  images, _ = data._arrays('train')
  stats = images / 255.0
  np.testing.assert_allclose(data.mean, [stats.mean()], rtol=1e-6)
  np.testing.assert_allclose(data.std, [stats.std()], rtol=1e-6)


def test_rotation_by_zero_and_quarter_turn():
  image = tf.constant(
    np.random.RandomState(0).uniform(0, 255, (9, 9, 1)), tf.float32
  )
  np.testing.assert_allclose(
    augment.rotate(image, tf.constant(0.0)), image, atol=1e-4
  )
  turned = augment.rotate(image, tf.constant(np.pi / 2))
  np.testing.assert_allclose(
    turned[..., 0], np.rot90(image[..., 0], k=1), atol=1e-3
  )


def test_random_resized_crop_and_imagenet_eval_sizes():
  image = tf.constant(
    np.random.RandomState(0).randint(0, 255, (60, 80, 3)), tf.uint8
  )
  out = augment.train_image(
    image,
    tf.constant([1, 2], tf.int64),
    image_size=32,
    crop='resized',
    crop_padding=0,
    resize=0,
    flip=True,
    rotation=0.0,
  )
  assert out.shape == (32, 32, 3)
  view = augment.eval_view(image, image_size=32, crop='resized', resize=0)
  assert view.shape[0] == round(32 / 0.875)  # shorter side
  assert augment.eval_image(
    image, image_size=32, crop='resized', resize=0
  ).shape == (32, 32, 3)


def test_train_label_counts(fer_config, fer_rows):
  data = pipeline.InputPipeline(fer_config(), num_devices=1)
  want = np.bincount(
    [l for l, _, u in fer_rows if u == 'Training'], minlength=7
  )
  np.testing.assert_array_equal(data.train_label_counts(), want)
