"""RandAugment (Cubuk et al. 2020) as stateless tf ops, after torchvision's.

torchvision's `transforms.v2.RandAugment` applies `num_ops` operations drawn
uniformly from OPS, each at the same `magnitude` (a bin of
`num_magnitude_bins`), with a random sign for the signed operations. This
module keeps its operation list, magnitude tables and geometry (nearest
neighbour, `fill` outside the image, PIL's pixel-centre convention, which
torchvision's PIL path uses), but draws every choice from an explicit seed:
an example's augmentation depends only on its seed, as in augment.py, so a
resumed run sees the same images.

Images are float32 [H, W, C] in [0, 255] with C = 1 or 3. torchvision works
on uint8; here values stay float. Operations defined on integer levels
(Posterize, Solarize, Equalize) read a value x as level floor(x), which is
what casting to uint8 does; the blends (Brightness, Color, Contrast,
Sharpness) and AutoContrast keep the fraction that uint8 would truncate.
Every output is clipped to [0, 255] (pixels outside the image get `fill`).
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

OPS = (
  'Identity',
  'ShearX',
  'ShearY',
  'TranslateX',
  'TranslateY',
  'Rotate',
  'Brightness',
  'Color',
  'Contrast',
  'Sharpness',
  'Posterize',
  'Solarize',
  'AutoContrast',
  'Equalize',
)
# Operations whose magnitude gets a random sign.
SIGNED_OPS = frozenset(
  (
    'ShearX',
    'ShearY',
    'TranslateX',
    'TranslateY',
    'Rotate',
    'Brightness',
    'Color',
    'Contrast',
    'Sharpness',
  )
)
# The top of each linear magnitude range (torchvision's tables). Translation
# is a fraction of the image's width or height: 150 px of AutoAugment's 331.
MAX_MAGNITUDE = {
  'ShearX': 0.3,
  'ShearY': 0.3,
  'TranslateX': 150.0 / 331.0,
  'TranslateY': 150.0 / 331.0,
  'Rotate': 30.0,
  'Brightness': 0.9,
  'Color': 0.9,
  'Contrast': 0.9,
  'Sharpness': 0.9,
}
# ITU-R 601-2 luma, the weights of PIL's convert('L').
LUMA = (0.299, 0.587, 0.114)
# PIL's ImageFilter.SMOOTH, the blurred image Sharpness blends away from.
SMOOTH = ((1.0, 1.0, 1.0), (1.0, 5.0, 1.0), (1.0, 1.0, 1.0))
SMOOTH_SUM = 13.0
# Folded into the seed before any draw. stateless_split's first rows do not
# depend on how many are asked for, so without it an example seed passed
# both here and to augment.train_image or erasing would draw the same bits.
SEED_SALT = 0x5A4D


GEOMETRIC_OPS = ('ShearX', 'ShearY', 'TranslateX', 'TranslateY', 'Rotate')
# Ops that map each pixel linearly: pixel @ matrix.
LINEAR_OPS = ('Brightness', 'Color')
# rand_augment dispatches on these kinds. In a tf.data map every node of
# every branch of tf.switch_case costs time (about 1 us each) whether taken
# or not, so the geometric and the linear ops each share one small branch
# whose matrix comes from a table.
KINDS = (
  'Identity',
  'Geometric',
  'Linear',
  'Contrast',
  'Sharpness',
  'Posterize',
  'Solarize',
  'AutoContrast',
  'Equalize',
)
KIND_OF_OP = tuple(
  KINDS.index(
    'Geometric' if op in GEOMETRIC_OPS else 'Linear' if op in LINEAR_OPS else op
  )
  for op in OPS
)


def op_value(
  op: str,
  magnitude: int,
  num_magnitude_bins: int,
  height: int | None = None,
  width: int | None = None,
) -> float | int:
  """The unsigned value torchvision gives `op` at a magnitude bin.

  Shears: the shear factor; translations: whole pixels (of `width` for X,
  `height` for Y); Rotate: degrees; Brightness, Color, Contrast, Sharpness:
  the enhancement factor minus 1; Posterize: bits kept (an int); Solarize:
  the threshold as a fraction of 255; other ops: 0.
  """
  _check_magnitude(magnitude, num_magnitude_bins)
  fraction = magnitude / (num_magnitude_bins - 1)
  if op in ('TranslateX', 'TranslateY'):
    size = width if op == 'TranslateX' else height
    if size is None:
      raise ValueError(f'{op} needs the image size to give pixels')
    # torchvision takes int() of the pixel count: toward zero.
    return float(math.floor(MAX_MAGNITUDE[op] * fraction * size))
  if op in MAX_MAGNITUDE:
    return MAX_MAGNITUDE[op] * fraction
  if op == 'Posterize':
    # torchvision: 8 - round(bin / ((bins - 1) / 4)); round() of Python and
    # of torch both round halves to even.
    return 8 - round(magnitude / ((num_magnitude_bins - 1) / 4))
  if op == 'Solarize':
    return 1.0 - fraction
  if op in OPS:
    return 0.0
  raise ValueError(f'Unknown RandAugment op {op!r}; expected one of {OPS}')


def sample_ops(seed: tf.Tensor, num_ops: int) -> tuple[tf.Tensor, tf.Tensor]:
  """The ops and signs one image gets: ([num_ops] int32 indices into OPS,
  [num_ops] bool, True where a signed op's magnitude is negated)."""
  seed = tf.random.experimental.stateless_fold_in(seed, SEED_SALT)
  op_seed, sign_seed = tf.unstack(
    tf.random.experimental.stateless_split(seed, num=2)
  )
  ops = tf.random.stateless_uniform(
    [num_ops], op_seed, minval=0, maxval=len(OPS), dtype=tf.int32
  )
  # torchvision negates when torch.rand(()) <= 0.5.
  negative = tf.random.stateless_uniform([num_ops], sign_seed) <= 0.5
  return ops, negative


def rand_augment(
  image: tf.Tensor,
  seed: tf.Tensor,
  *,
  num_ops: int = 2,
  magnitude: int = 9,
  num_magnitude_bins: int = 31,
  fill: float = 0.0,
) -> tf.Tensor:
  """`num_ops` random ops at `magnitude`, drawn from `seed` ([2] int).

  image: float32 [H, W, C] in [0, 255], C = 1 or 3, with a static shape.
  Returns the same shape and dtype, in [0, 255] (with `fill` where geometry
  leaves the image).
  """
  image = _check_image(image)
  if not isinstance(num_ops, int) or num_ops < 0:
    raise ValueError(f'num_ops must be an integer >= 0; got {num_ops!r}')
  _check_magnitude(magnitude, num_magnitude_bins)
  if num_ops == 0:
    return image
  height, width, channels = image.shape
  value = {
    op: op_value(op, magnitude, num_magnitude_bins, height, width) for op in OPS
  }
  # Per (sign: + then -, op): the geometric ops' source maps, the linear
  # ops' matrices and the blends' factors; identities elsewhere.
  signed = [
    {op: sign * value[op] if op in SIGNED_OPS else value[op] for op in OPS}
    for sign in (1.0, -1.0)
  ]
  source_maps = _constant(
    [[_source_map(op, v[op], height, width) for op in OPS] for v in signed]
  )
  matrices = _constant(
    [[_pixel_matrix(op, v[op], channels) for op in OPS] for v in signed]
  )
  factors = _constant([[1.0 + v[op] for op in OPS] for v in signed])
  kinds = tf.constant(KIND_OF_OP)
  ops, negative = sample_ops(seed, num_ops)
  for i in range(num_ops):
    at = tf.stack([tf.cast(negative[i], tf.int32), ops[i]])
    image = _apply_kind(
      image,
      tf.gather(kinds, ops[i]),
      source_map=tf.gather_nd(source_maps, at),
      matrix=tf.gather_nd(matrices, at),
      factor=tf.gather_nd(factors, at),
      bits=value['Posterize'],
      threshold=value['Solarize'],
      fill=fill,
    )
  return image


def apply_op(
  image: tf.Tensor, op: str, value: float, *, fill: float = 0.0
) -> tf.Tensor:
  """One RandAugment op at a signed value (see op_value for its unit)."""
  image = _check_image(image)
  if op not in OPS:
    raise ValueError(f'Unknown RandAugment op {op!r}; expected one of {OPS}')
  height, width, channels = image.shape
  return _apply_kind(
    image,
    KIND_OF_OP[OPS.index(op)],
    source_map=_constant(_source_map(op, value, height, width)),
    matrix=_constant(_pixel_matrix(op, value, channels)),
    factor=1.0 + value,
    bits=value,
    threshold=value,
    fill=fill,
  )


def _apply_kind(
  image, kind, *, source_map, matrix, factor, bits, threshold, fill
):
  """The op of one kind, with its parameters (tensors or numbers)."""
  branches = {
    'Identity': lambda: image,
    'Geometric': lambda: _resample(image, source_map, fill),
    'Linear': lambda: _clip(_per_pixel_matmul(image, matrix)),
    'Contrast': lambda: _blend(_mean_luma(image), image, factor),
    'Sharpness': lambda: _blend(_smooth(image), image, factor),
    'Posterize': lambda: _posterize(image, bits),
    'Solarize': lambda: _solarize(image, threshold),
    'AutoContrast': lambda: _autocontrast(image),
    'Equalize': lambda: _equalize(image),
  }
  if isinstance(kind, int):
    return branches[KINDS[kind]]()
  out = tf.switch_case(kind, [branches[name] for name in KINDS])
  return tf.ensure_shape(out, image.shape)


def _check_image(image) -> tf.Tensor:
  image = tf.convert_to_tensor(image)
  if image.dtype != tf.float32:
    raise TypeError(
      f'RandAugment takes float32 images in [0, 255]; got {image.dtype.name}'
    )
  if (
    image.shape.rank != 3
    or image.shape[-1] not in (1, 3)
    or not image.shape.is_fully_defined()
  ):
    raise ValueError(
      'RandAugment takes one [height, width, channels] image with 1 or 3 '
      f'channels and a static shape; got shape {image.shape}'
    )
  return image


def _check_magnitude(magnitude: int, num_magnitude_bins: int) -> None:
  if not isinstance(num_magnitude_bins, int) or num_magnitude_bins < 2:
    raise ValueError(
      f'num_magnitude_bins must be an integer >= 2; got {num_magnitude_bins!r}'
    )
  if not isinstance(magnitude, int) or not 0 <= magnitude < num_magnitude_bins:
    raise ValueError(
      f'magnitude must be an integer bin in [0, {num_magnitude_bins - 1}] '
      f'(num_magnitude_bins={num_magnitude_bins}); got {magnitude!r}'
    )


def _constant(array) -> tf.Tensor:
  return tf.constant(np.asarray(array, np.float32))


def _clip(image: tf.Tensor) -> tf.Tensor:
  return tf.minimum(tf.maximum(image, 0.0), 255.0)


def _source_map(op: str, value: float, height: int, width: int) -> np.ndarray:
  """[3, 2] m: output point (x, y) reads input point (x, y, 1) @ m.

  Points are continuous, pixel i covering [i, i + 1) (PIL's convention).
  In double precision, as torchvision and PIL compute it; the identity for
  ops that do not move pixels.
  """
  a, b, c, d, e, f = 1.0, 0.0, 0.0, 0.0, 1.0, 0.0
  if op == 'ShearX':
    # torchvision shears by atan(value) about the top-left corner, so a
    # pixel at (x, y) comes from (x + value * y, y).
    b = value
  elif op == 'ShearY':
    d = value
  elif op == 'TranslateX':
    c = -value
  elif op == 'TranslateY':
    f = -value
  elif op == 'Rotate':
    # Counter-clockwise about the image centre, as PIL's Image.rotate.
    cx, cy = width / 2, height / 2
    a = e = math.cos(math.radians(value))
    d = math.sin(math.radians(value))
    b = -d
    c = cx - a * cx - b * cy
    f = cy - d * cx - e * cy
  return np.array([[a, d], [b, e], [c, f]])


def _pixel_matrix(op: str, value: float, channels: int) -> np.ndarray:
  """[C, C] m: Brightness and Color map each pixel p to p @ m."""
  factor = 1.0 + value
  if op == 'Brightness':  # PIL blends with black
    return factor * np.eye(channels)
  if op == 'Color' and channels == 3:
    # PIL blends with the luma image: luma + factor (p - luma).
    luma = np.tile(np.array(LUMA)[:, None], [1, 3])
    return factor * np.eye(3) + (1.0 - factor) * luma
  return np.eye(channels)


def _resample(image: tf.Tensor, source_map, fill: float) -> tf.Tensor:
  """Nearest-neighbour resampling: output pixel centre (x, y) (at i + 0.5)
  reads the input pixel that holds (x, y, 1) @ source_map, as PIL's
  Image.transform does; fill where that lies outside."""
  height, width, channels = image.shape
  y, x = (_constant(grid) for grid in np.mgrid[0:height, 0:width] + 0.5)
  a, d, b, e, c, f = tf.unstack(tf.reshape(source_map, [6]))
  source_x = tf.floor(a * x + b * y + c)
  source_y = tf.floor(d * x + e * y + f)
  inside = (
    (source_x >= 0.0)
    & (source_x < width)
    & (source_y >= 0.0)
    & (source_y < height)
  )
  # One gather of whole pixels, from the image and one more pixel of fill
  # (cheaper on CPU than ImageProjectiveTransformV3 or a select).
  index = tf.where(inside, source_y * width + source_x, height * width)
  pixels = tf.concat(
    [tf.reshape(image, [-1, channels]), _constant([[fill] * channels])],
    axis=0,
  )
  return tf.reshape(tf.gather(pixels, tf.cast(index, tf.int32)), image.shape)


def _blend(degenerate, image: tf.Tensor, factor) -> tf.Tensor:
  """PIL's ImageEnhance: degenerate + factor (image - degenerate)."""
  return _clip(degenerate + factor * (image - degenerate))


def _mean_luma(image: tf.Tensor) -> tf.Tensor:
  """The mean luma: the flat image Contrast blends towards."""
  means = tf.reduce_mean(image, axis=[0, 1])
  if image.shape[-1] == 1:
    return means[0]
  return tf.reduce_sum(means * _constant(LUMA))  # luma is linear


def _per_pixel_matmul(image: tf.Tensor, matrix) -> tf.Tensor:
  """pixel @ matrix for every pixel of [H, W, C]: a per-channel scale or
  a mix of channels without broadcasting over the image (slow on CPU)."""
  flat = tf.reshape(image, [-1, image.shape[-1]]) @ matrix
  return tf.reshape(flat, image.shape)


def _smooth(image: tf.Tensor) -> tf.Tensor:
  """PIL's SMOOTH filter: 3x3 weighted mean inside, border pixels kept."""
  kernel = np.array(SMOOTH) / SMOOTH_SUM
  kernel = np.tile(kernel[:, :, None, None], [1, 1, image.shape[-1], 1])
  inner = tf.nn.depthwise_conv2d(
    image[None], _constant(kernel), [1, 1, 1, 1], 'VALID'
  )
  change = inner[0] - image[1:-1, 1:-1]
  return image + tf.pad(change, [[1, 1], [1, 1], [0, 0]])


def _levels(image: tf.Tensor) -> tf.Tensor:
  """The uint8 level of each value, as a cast to uint8 would give it."""
  return tf.floor(_clip(image))


def _posterize(image: tf.Tensor, bits: int) -> tf.Tensor:
  """Keeps the top `bits` bits of each level."""
  if isinstance(bits, tf.Tensor) or not 1 <= bits <= 8:
    raise ValueError(f'Posterize keeps 1 to 8 bits (a number); got {bits!r}')
  bits = int(bits)  # as torchvision, whose table holds integers
  if bits == 8:
    return image
  step = float(2 ** (8 - bits))
  return tf.floor(_levels(image) / step) * step


def _solarize(image: tf.Tensor, threshold: float) -> tf.Tensor:
  """Inverts levels at or above threshold * 255."""
  # A level floor(x) reaches the threshold exactly when x >= ceil(threshold),
  # computed in double: float32 would put 255 / 3 (magnitude 20 of 31) at
  # 85.0 and flip level 85, which PIL keeps.
  bound = float(math.ceil(threshold * 255.0))
  # x -> 255 - x where flipped, as arithmetic: a select costs more on CPU.
  flip = tf.cast(image >= bound, tf.float32)
  return image + flip * (255.0 - 2.0 * image)


def _autocontrast(image: tf.Tensor) -> tf.Tensor:
  """Stretches each channel's [min, max] to [0, 255]; flat channels stay."""
  low = tf.reduce_min(image, axis=[0, 1])
  span = tf.reduce_max(image, axis=[0, 1]) - low
  flat = span <= 0.0
  scale = tf.where(flat, 1.0, 255.0 / span)
  offset = tf.where(flat, 0.0, -low * scale)
  # (x - low) * scale as a diagonal matmul and a bias (see _per_pixel_matmul).
  stretched = _per_pixel_matmul(image, tf.linalg.diag(scale))
  return _clip(tf.nn.bias_add(stretched, offset))


def _equalize(image: tf.Tensor) -> tf.Tensor:
  """PIL's ImageOps.equalize, channel by channel.

  Level i maps to (step // 2 + #pixels below i) // step, where step is the
  number of pixels below the channel's top level, // 255. A channel with
  step 0 (one level, or too few pixels) is left as it is.
  """
  channels = image.shape[-1]
  # One histogram of level + 256 c over the channels c.
  offsets = _constant(np.arange(channels) * 256)
  index = tf.cast(tf.nn.bias_add(_levels(image), offsets), tf.int32)
  histogram = tf.reshape(
    tf.raw_ops.Bincount(
      arr=tf.reshape(index, [-1]),
      size=256 * channels,
      weights=tf.constant([], tf.int32),
    ),
    [channels, 256],
  )
  below = tf.cumsum(histogram, axis=1, exclusive=True)
  # Below the top level: the most pixels below any level that has pixels.
  below_top = tf.reduce_max(tf.where(histogram > 0, below, 0), axis=1)
  step = below_top // 255
  safe_step = tf.maximum(step, 1)[:, None]
  lut = tf.minimum((safe_step // 2 + below) // safe_step, 255)
  lut = tf.cast(tf.reshape(lut, [-1]), tf.float32)
  equalized = tf.gather_nd(lut, index[..., None])

  def keep_flat_channels():
    keep = tf.cast(step == 0, tf.float32)
    return equalized * (1.0 - keep) + image * keep

  # Rare (a flat or tiny channel): skip the broadcast blend otherwise.
  return tf.cond(
    tf.reduce_any(step == 0), keep_flat_channels, lambda: equalized
  )
