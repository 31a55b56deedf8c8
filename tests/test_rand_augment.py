"""RandAugment and random erasing: each op against PIL (what torchvision's
PIL path calls), and the draws from the seed."""

import math

import numpy as np
import pytest

tf = pytest.importorskip('tensorflow')
Image = pytest.importorskip('PIL.Image')

from PIL import ImageEnhance, ImageOps  # noqa: E402

from densenet_flax.data import erasing  # noqa: E402
from densenet_flax.data import rand_augment  # noqa: E402

OPS = rand_augment.OPS
# Height != width, so a swapped axis shows.
HEIGHT, WIDTH = 37, 45
BINS = 31
FILL = 7


def random_image(mode, height=HEIGHT, width=WIDTH, low=0, high=256, seed=0):
  """Random levels in [low, high); RGB channels with different ranges, so
  that the luma and the plain channel mean differ."""
  rng = np.random.default_rng(seed)
  if mode == 'L':
    return rng.integers(low, high, (height, width), dtype=np.uint8)
  span = high - low
  lows = np.array([low, low, low + span * 2 // 5])
  highs = np.array([high, low + span * 3 // 5, high])
  return rng.integers(lows, highs, (height, width, 3), dtype=np.uint8)


def ours(array, op, value, fill=FILL):
  image = tf.constant(array.reshape(*array.shape[:2], -1), tf.float32)
  out = rand_augment.apply_op(image, op, value, fill=fill)
  assert out.dtype == tf.float32 and out.shape == image.shape
  return out.numpy().reshape(array.shape)


def torchvision_inverse_affine(center, angle, translate, shear):
  """torchvision's _get_inverse_affine_matrix at scale 1: the matrix its PIL
  path hands to Image.transform (output point -> input point)."""
  rot = math.radians(angle)
  sx, sy = math.radians(shear[0]), math.radians(shear[1])
  cx, cy = center
  tx, ty = translate
  a = math.cos(rot - sy) / math.cos(sy)
  b = -math.cos(rot - sy) * math.tan(sx) / math.cos(sy) - math.sin(rot)
  c = math.sin(rot - sy) / math.cos(sy)
  d = -math.sin(rot - sy) * math.tan(sx) / math.cos(sy) + math.cos(rot)
  m = [d, -b, 0.0, -c, a, 0.0]
  m[2] += m[0] * (-cx - tx) + m[1] * (-cy - ty) + cx
  m[5] += m[3] * (-cx - tx) + m[4] * (-cy - ty) + cy
  return m


def geometry(op, value, height, width):
  """The inverse affine matrix torchvision's RandAugment uses for op."""
  centre = (width * 0.5, height * 0.5)
  if op == 'ShearX':
    shear = (math.degrees(math.atan(value)), 0.0)
    return torchvision_inverse_affine((0, 0), 0.0, (0, 0), shear)
  if op == 'ShearY':
    shear = (0.0, math.degrees(math.atan(value)))
    return torchvision_inverse_affine((0, 0), 0.0, (0, 0), shear)
  if op == 'TranslateX':
    return torchvision_inverse_affine(centre, 0.0, (int(value), 0), (0, 0))
  if op == 'TranslateY':
    return torchvision_inverse_affine(centre, 0.0, (0, int(value)), (0, 0))
  # F.rotate(angle) is F.affine(-angle) about the centre (counter-clockwise).
  return torchvision_inverse_affine(centre, -value, (0, 0), (0, 0))


def pil_reference(array, op, value, fill=FILL):
  """torchvision's RandAugment op on a PIL image, as uint8 levels."""
  image = Image.fromarray(array)
  fillcolor = fill if image.mode == 'L' else (fill,) * 3
  if op in ('ShearX', 'ShearY', 'TranslateX', 'TranslateY'):
    matrix = geometry(op, value, *array.shape[:2])
    out = image.transform(
      image.size,
      Image.Transform.AFFINE,
      matrix,
      Image.Resampling.NEAREST,
      fillcolor=fillcolor,
    )
  elif op == 'Rotate':
    out = image.rotate(value, Image.Resampling.NEAREST, fillcolor=fillcolor)
  elif op in ('Brightness', 'Color', 'Contrast', 'Sharpness'):
    out = getattr(ImageEnhance, op)(image).enhance(1.0 + value)
  elif op == 'Posterize':
    out = ImageOps.posterize(image, int(value))
  elif op == 'Solarize':
    out = ImageOps.solarize(image, 255.0 * value)
  elif op == 'AutoContrast':
    out = ImageOps.autocontrast(image)
  elif op == 'Equalize':
    out = ImageOps.equalize(image)
  else:
    out = image
  return np.asarray(out, np.float64)


# Where PIL rounds an intermediate image before blending, in levels: the
# luma of convert('L') (fixed-point weights, rounded: measured within
# 0.501 of 0.299 R + 0.587 G + 0.114 B), the SMOOTH filter's output
# (rounded), the contrast mean (int(mean + 0.5) of the rounded luma). We keep
# them in float, so ours - PIL moves by up to |1 - factor| times this.
# Measured at |1 - factor| = 0.9: Color (RGB) -0.45 to 1.35, Sharpness
# -0.42 to 1.32, Contrast -0.36 to 1.26, Brightness 0 to 0.99.
DEGENERATE_ROUNDING = {
  'Brightness': 0.0,
  'Color': 0.501,
  'Sharpness': 0.5,
  'Contrast': 1.001,
}
# PIL's affine transforms run in 16.16 fixed point: each coefficient is off
# by up to 2^-17 and the error adds up along a row and a column, so where the
# exact source point is on or near a pixel edge PIL can pick the neighbour.
# Measured: mismatches at most 0.0023 px from an edge at 224 px; at most
# 0.72% of the pixels (Rotate 30 degrees at 37x45: sin 30 = 1/2 puts many
# source points exactly on edges).
EDGE_SLACK = 0.005
MAX_EDGE_MISMATCH = 0.01


def assert_same_geometry(got, want, matrix):
  """Equal, but where PIL's source point is within EDGE_SLACK of an edge."""
  height, width = got.shape[:2]
  y, x = np.mgrid[0:height, 0:width] + 0.5
  source_x = matrix[0] * x + matrix[1] * y + matrix[2]
  source_y = matrix[3] * x + matrix[4] * y + matrix[5]
  to_edge = np.minimum(
    np.abs(source_x - np.round(source_x)),
    np.abs(source_y - np.round(source_y)),
  )
  differ = got != want
  if differ.ndim == 3:
    differ = differ.any(axis=-1)
  assert differ.mean() <= MAX_EDGE_MISMATCH, differ.mean()
  assert np.all(to_edge[differ] < EDGE_SLACK), to_edge[differ].max()


def assert_matches_pil(array, op, value):
  got = ours(array, op, value)
  want = pil_reference(array, op, value)
  assert got.min() >= 0 and got.max() <= 255
  if op in ('ShearX', 'ShearY', 'TranslateX', 'TranslateY', 'Rotate'):
    height, width = array.shape[:2]
    assert_same_geometry(got, want, geometry(op, value, height, width))
  elif op in DEGENERATE_ROUNDING:
    # PIL truncates the blend to uint8 (0 <= ours - PIL < 1) after rounding
    # the degenerate image; 1e-3 covers float32 against PIL's float maths.
    slack = DEGENERATE_ROUNDING[op] * abs(value) + 1e-3
    diff = got - want
    assert diff.min() >= -slack and diff.max() < 1 + slack, (
      diff.min(),
      diff.max(),
    )
  elif op == 'AutoContrast':
    # PIL truncates the stretched level; we keep the fraction. Where the
    # exact value is a whole level, PIL's double can land just below it and
    # truncate to the level under: hence <= 1 + 1e-3, not < 1.
    diff = got - want
    assert diff.min() >= -1e-3 and diff.max() <= 1 + 1e-3, (
      diff.min(),
      diff.max(),
    )
  else:  # Posterize, Solarize, Equalize, Identity: integer maths.
    np.testing.assert_array_equal(got, want)


def cases():
  for mode in ('L', 'RGB'):
    for op in OPS:
      if op in rand_augment.SIGNED_OPS:
        for magnitude, sign in ((9, 1), (9, -1), (30, 1), (30, -1)):
          yield mode, op, magnitude, sign
      elif op in ('Posterize', 'Solarize'):
        for magnitude in (9, 20, 30):
          yield mode, op, magnitude, 1
      else:
        yield mode, op, 9, 1


@pytest.mark.parametrize('mode,op,magnitude,sign', list(cases()))
def test_op_matches_pil(mode, op, magnitude, sign):
  value = rand_augment.op_value(op, magnitude, BINS, HEIGHT, WIDTH)
  value = float(value) * sign
  if op == 'AutoContrast':  # a narrow range, so that it stretches
    array = random_image(mode, low=40, high=201)
  else:
    array = random_image(mode)
  assert_matches_pil(array, op, value)


@pytest.mark.parametrize('op', ['ShearX', 'ShearY', 'Rotate', 'TranslateY'])
def test_geometry_matches_pil_at_224(op):
  array = random_image('RGB', 224, 224, seed=1)
  for magnitude in (9, 17, 30):
    value = float(rand_augment.op_value(op, magnitude, BINS, 224, 224))
    for sign in (1, -1):
      assert_matches_pil(array, op, sign * value)


def test_equalize_edge_cases_match_pil():
  rng = np.random.default_rng(3)
  flat = np.full((HEIGHT, WIDTH), 90, np.uint8)
  two_levels = np.where(rng.random((HEIGHT, WIDTH)) < 0.3, 10, 200)
  skewed = np.minimum(rng.exponential(20, (HEIGHT, WIDTH, 3)), 255)
  # At 224 px the step (pixels below the top level // 255) differs from
  # // 256 in most channels, which small images rarely show.
  large = np.minimum(rng.exponential(40, (224, 224, 3)), 255)
  for array in (flat, two_levels, skewed, large):
    assert_matches_pil(array.astype(np.uint8), 'Equalize', 0.0)


def test_magnitude_table_is_torchvisions():
  # torchvision's tables: linspace(0, top, bins)[magnitude], translation a
  # fraction of the width/height truncated to pixels, posterize
  # 8 - round(arange(bins) / ((bins - 1) / 4)), solarize linspace(1, 0).
  for bins in (10, 31):
    for magnitude in range(bins):
      for op, top in (('ShearX', 0.3), ('Rotate', 30.0), ('Color', 0.9)):
        want = np.linspace(0, top, bins)[magnitude]
        got = rand_augment.op_value(op, magnitude, bins)
        assert got == pytest.approx(want)
      want = int(np.linspace(0, 150 / 331 * WIDTH, bins)[magnitude])
      got = rand_augment.op_value('TranslateX', magnitude, bins, HEIGHT, WIDTH)
      assert float(got) == want
      want = int(np.linspace(0, 150 / 331 * HEIGHT, bins)[magnitude])
      got = rand_augment.op_value('TranslateY', magnitude, bins, HEIGHT, WIDTH)
      assert float(got) == want
      posterize = 8 - np.round(np.arange(bins) / ((bins - 1) / 4))
      got = rand_augment.op_value('Posterize', magnitude, bins)
      assert got == posterize[magnitude] and isinstance(got, int)
      want = np.linspace(1.0, 0.0, bins)[magnitude]
      got = rand_augment.op_value('Solarize', magnitude, bins)
      assert got == pytest.approx(want)


def test_magnitude_zero_is_identity():
  rng = np.random.default_rng(4)
  # Not whole levels, and below 255 (see the Solarize check below).
  image = tf.constant(rng.uniform(0, 254.5, (HEIGHT, WIDTH, 3)), tf.float32)
  for op in OPS:
    if op in ('AutoContrast', 'Equalize'):  # torchvision has no magnitude
      continue
    value = rand_augment.op_value(op, 0, BINS, HEIGHT, WIDTH)
    out = rand_augment.apply_op(image, op, value, fill=FILL)
    np.testing.assert_allclose(out, image, atol=1e-4, err_msg=op)
  # torchvision's threshold at magnitude 0 is 255 itself: level 255 flips.
  solarized = rand_augment.apply_op(
    tf.constant([[[254.0], [255.0]]]), 'Solarize', 1.0
  )
  np.testing.assert_array_equal(solarized.numpy().ravel(), [254, 0])


def test_color_leaves_gray_images():
  image = tf.constant(random_image('L')[..., None], tf.float32)
  out = rand_augment.apply_op(image, 'Color', 0.9)
  np.testing.assert_array_equal(out, image)


def test_ops_on_fractional_levels():
  # x in [k, k + 1) is level k: Posterize, Solarize and Equalize act as
  # on the level, and Posterize/Equalize return whole levels.
  fraction = np.random.default_rng(5).uniform(0, 0.999, (HEIGHT, WIDTH, 3))
  levels = random_image('RGB', seed=6).astype(np.float64)
  image = tf.constant(levels + fraction, tf.float32)
  whole = tf.constant(levels, tf.float32)
  for op, value in (('Posterize', 3), ('Equalize', 0.0)):
    np.testing.assert_array_equal(
      rand_augment.apply_op(image, op, value),
      rand_augment.apply_op(whole, op, value),
    )
  flipped = rand_augment.apply_op(image, 'Solarize', 0.5).numpy()
  want = np.where(levels >= 127.5, 255 - (levels + fraction), image)
  np.testing.assert_allclose(flipped, want, atol=1e-4)


def seeds(count, run=7):
  return np.stack([np.full(count, run), np.arange(count)], 1).astype(np.int64)


def mapped(fn, seed_array, batch=None):
  """fn(seed) over the seeds in a tf.data map, as the pipeline calls it."""
  data = tf.data.Dataset.from_tensor_slices(seed_array).map(fn)
  return next(iter(data.batch(batch or len(seed_array))))


def test_op_choice_is_uniform_and_signs_are_fair():
  count, num_ops = 7000, 2
  ops, negative = mapped(
    lambda s: rand_augment.sample_ops(s, num_ops), seeds(count)
  )
  ops, negative = ops.numpy(), negative.numpy()
  assert ops.min() == 0 and ops.max() == len(OPS) - 1
  for slot in range(num_ops):
    counts = np.bincount(ops[:, slot], minlength=len(OPS))
    expected = count / len(OPS)
    chi2 = ((counts - expected) ** 2 / expected).sum()
    # 13 degrees of freedom: P(chi2 > 60) < 1e-7 for a uniform draw, while
    # one op drawn 10% too rarely already adds 25 on its own.
    assert chi2 < 60, (slot, counts)
  # The two slots are drawn independently: the pairs spread over all 196.
  pairs = np.bincount(ops[:, 0] * len(OPS) + ops[:, 1], minlength=196)
  expected = count / 196
  assert ((pairs - expected) ** 2 / expected).sum() < 300  # 195 dof, 1e-7
  # Signs: within 5 standard deviations of a fair coin.
  assert abs(negative.mean() - 0.5) < 5 * math.sqrt(0.25 / negative.size)


def test_draws_do_not_repeat_other_users_of_the_seed():
  # One example seed may feed augment.train_image (stateless_split), then
  # RandAugment, then erasing: their draws must be independent.
  def draws(seed):
    crop_seed = tf.random.experimental.stateless_split(seed, num=4)[0]
    crop = tf.random.stateless_uniform([], crop_seed)
    op = tf.cast(rand_augment.sample_ops(seed, 1)[0][0], tf.float32)
    erase = erasing.erasing_box(seed, 50, 50)[4]
    return tf.stack([crop, op, tf.cast(erase, tf.float32)])

  count = 4000
  values = mapped(draws, seeds(count)).numpy()
  correlation = np.corrcoef(values.T)
  # Independent draws: each correlation within 5 / sqrt(n) of 0; sharing
  # Philox bits makes them near 1.
  off_diagonal = correlation[np.triu_indices(3, 1)]
  assert np.all(np.abs(off_diagonal) < 5 / math.sqrt(count)), correlation


def test_rand_augment_is_the_sampled_ops_in_turn():
  array = random_image('RGB', seed=8)
  image = tf.constant(array, tf.float32)
  for i in range(12):
    seed = tf.constant([3, i], tf.int64)
    got = rand_augment.rand_augment(
      image, seed, num_ops=2, magnitude=13, fill=FILL
    )
    ops, negative = rand_augment.sample_ops(seed, 2)
    want = image
    for op, flip in zip(ops.numpy(), negative.numpy()):
      name = OPS[op]
      value = rand_augment.op_value(name, 13, BINS, HEIGHT, WIDTH)
      if name in rand_augment.SIGNED_OPS and flip:
        value = -value
      want = rand_augment.apply_op(want, name, value, fill=FILL)
    np.testing.assert_allclose(got, want, atol=1e-4, err_msg=str(i))


def test_rand_augment_is_deterministic_per_seed():
  array = random_image('RGB', seed=9)

  def augment(seed):
    image = tf.constant(array, tf.float32)
    return rand_augment.rand_augment(image, seed, num_ops=2, magnitude=9)

  seed_array = seeds(24)
  first = mapped(augment, seed_array).numpy()
  again = mapped(augment, seed_array).numpy()
  np.testing.assert_array_equal(first, again)
  eager = augment(tf.constant(seed_array[5])).numpy()
  np.testing.assert_allclose(eager, first[5], atol=1e-4)
  # Different seeds draw different ops, so different images.
  ops = mapped(lambda s: rand_augment.sample_ops(s, 2)[0], seed_array).numpy()
  assert len({tuple(o) for o in ops}) > 12
  changed = [
    not np.array_equal(first[i], first[j])
    for i in range(24)
    for j in range(i)
    if tuple(ops[i]) != tuple(ops[j])
    and not {OPS[o] for o in (*ops[i], *ops[j])} & {'Identity'}
  ]
  assert changed and all(changed)


@pytest.mark.parametrize('channels', [1, 3])
def test_rand_augment_keeps_shape_dtype_and_range(channels):
  rng = np.random.default_rng(10)
  array = rng.uniform(0, 255, (HEIGHT, WIDTH, channels)).astype(np.float32)

  def augment(seed):
    return rand_augment.rand_augment(
      tf.constant(array), seed, num_ops=3, magnitude=30
    )

  out = mapped(augment, seeds(40)).numpy()
  assert out.shape == (40, HEIGHT, WIDTH, channels) and out.dtype == np.float32
  assert out.min() >= 0 and out.max() <= 255


def test_rand_augment_refuses_bad_arguments():
  image = tf.zeros([8, 8, 3])
  seed = tf.constant([0, 0], tf.int64)
  with pytest.raises(ValueError, match=r'magnitude must be .* \[0, 30\]'):
    rand_augment.rand_augment(image, seed, magnitude=31)
  with pytest.raises(ValueError, match='num_ops'):
    rand_augment.rand_augment(image, seed, num_ops=-1)
  with pytest.raises(TypeError, match='float32'):
    rand_augment.rand_augment(tf.zeros([8, 8, 3], tf.uint8), seed)
  with pytest.raises(ValueError, match='1 or 3'):
    rand_augment.rand_augment(tf.zeros([8, 8, 4]), seed)
  with pytest.raises(ValueError, match='Unknown RandAugment op'):
    rand_augment.apply_op(image, 'Invert', 0.0)
  with pytest.raises(ValueError, match='static shape'):
    tf.function(rand_augment.rand_augment).get_concrete_function(
      tf.TensorSpec([None, None, 3]), tf.TensorSpec([2], tf.int64)
    )


def erased_boxes(probability, count, value=-1.0, height=60, width=80):
  """(image, outputs) of random_erasing over count seeds."""
  rng = np.random.default_rng(11)
  image = rng.uniform(0, 255, (height, width, 3)).astype(np.float32)

  def erase(seed):
    return erasing.random_erasing(
      tf.constant(image), seed, probability=probability, value=value
    )

  return image, mapped(erase, seeds(count)).numpy()


def test_erasing_erases_one_rectangle_in_scale_and_ratio():
  image, outputs = erased_boxes(1.0, 400)
  height, width = image.shape[:2]
  fractions, aspects = [], []
  for out in outputs:
    changed = np.any(out != image, axis=-1)
    rows, cols = np.flatnonzero(changed.any(1)), np.flatnonzero(changed.any(0))
    top, bottom, left, right = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    box = np.zeros_like(changed)
    box[top:bottom, left:right] = True
    np.testing.assert_array_equal(changed, box)  # one full rectangle
    assert np.all(out[box] == -1.0)
    np.testing.assert_array_equal(out[~box], image[~box])  # the rest kept
    h, w = bottom - top, right - left
    # Sides are rounded to whole pixels: some area in scale and some aspect
    # ratio in ratio round to (h, w).
    area = height * width
    assert (h - 0.5) * (w - 0.5) <= 0.33 * area
    assert (h + 0.5) * (w + 0.5) >= 0.02 * area
    assert (h - 0.5) / (w + 0.5) <= 3.3 and (h + 0.5) / (w - 0.5) >= 0.3
    fractions.append(h * w / area)
    aspects.append(h / w)
  # The draws span the ranges: small and large, tall and wide.
  assert min(fractions) < 0.04 and max(fractions) > 0.28
  assert min(aspects) < 0.4 and max(aspects) > 2.5


def test_erasing_probability_is_respected():
  count = 2000
  for probability in (0.0, 0.25, 1.0):
    image, outputs = erased_boxes(probability, count)
    erased = np.any(outputs != image, axis=(1, 2, 3))
    sigma = math.sqrt(probability * (1 - probability) / count)
    assert abs(erased.mean() - probability) <= 5 * sigma, erased.mean()


def test_erasing_is_deterministic_per_seed():
  _, first = erased_boxes(0.5, 50)
  _, again = erased_boxes(0.5, 50)
  np.testing.assert_array_equal(first, again)
  assert len({out.tobytes() for out in first}) > 20
  image = tf.constant(
    np.arange(12 * 10 * 3, dtype=np.float32).reshape(12, 10, 3)
  )
  seed = tf.constant([7, 3], tf.int64)
  np.testing.assert_array_equal(
    erasing.random_erasing(image, seed, probability=1.0),
    erasing.random_erasing(image, seed, probability=1.0),
  )


def test_erasing_value_per_channel_keeps_dtype():
  image = tf.fill([20, 30, 3], 200.0)
  out = erasing.random_erasing(
    image, tf.constant([1, 2], tf.int64), probability=1.0, value=(1, 2, 3)
  ).numpy()
  assert out.shape == (20, 30, 3) and out.dtype == np.float32
  erased = np.any(out != 200.0, axis=-1)
  assert erased.any()
  np.testing.assert_array_equal(
    out[erased], np.tile([1, 2, 3], (erased.sum(), 1))
  )
  image = tf.fill([20, 30, 1], tf.constant(9, tf.uint8))
  out = erasing.random_erasing(
    image, tf.constant([1, 2], tf.int64), probability=1.0, value=4
  ).numpy()
  assert out.shape == (20, 30, 1) and out.dtype == np.uint8
  assert set(np.unique(out)) == {4, 9}


def test_erasing_refuses_bad_arguments():
  image, seed = tf.zeros([8, 8, 3]), tf.constant([0, 0], tf.int64)
  with pytest.raises(ValueError, match='probability'):
    erasing.random_erasing(image, seed, probability=1.5)
  with pytest.raises(ValueError, match='scale'):
    erasing.random_erasing(image, seed, scale=(0.5, 0.1))
  with pytest.raises(ValueError, match='ratio'):
    erasing.random_erasing(image, seed, ratio=(0.0, 1.0))
  with pytest.raises(ValueError, match='one per channel'):
    erasing.random_erasing(image, seed, value=(1.0, 2.0))
