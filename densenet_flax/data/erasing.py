"""Random erasing (Zhong et al. 2020) as a stateless tf op, after torchvision.

torchvision's `RandomErasing`: with probability `probability`, make up to 10
attempts at a rectangle whose area is a uniform fraction `scale` of the
image and whose aspect ratio (height / width) is log-uniform in `ratio`,
both sides rounded to whole pixels; the first one that fits inside the image
is placed uniformly and filled with `value`. If none fits, the image stays.
Every draw comes from an explicit seed, so an example's erasing depends only
on its seed, as in augment.py.

torchvision erases after normalisation, so the default value 0 is the
dataset mean; call this on the normalised image for the same effect.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import tensorflow as tf

ATTEMPTS = 10
# Folded into the seed before any draw (see rand_augment.SEED_SALT): the
# same example seed can then feed augment.train_image, RandAugment and this.
SEED_SALT = 0xE5A5


def random_erasing(
  image: tf.Tensor,
  seed: tf.Tensor,
  *,
  probability: float = 0.5,
  scale: tuple[float, float] = (0.02, 0.33),
  ratio: tuple[float, float] = (0.3, 3.3),
  value: float | Sequence[float] = 0.0,
) -> tf.Tensor:
  """Erases one random rectangle of image [H, W, C] with `value`.

  value: one number, or one per channel. Returns the same shape and dtype.
  """
  _check(probability, scale, ratio)
  image = tf.convert_to_tensor(image)
  if image.shape.rank != 3:
    raise ValueError(
      f'random_erasing takes one [height, width, channels] image; got shape '
      f'{image.shape}'
    )
  fill = tf.constant(value, image.dtype)
  if fill.shape.rank > 1 or fill.shape.num_elements() not in (
    1,
    image.shape[-1],
  ):
    raise ValueError(
      f'random_erasing value must be one number or one per channel '
      f'({image.shape[-1]}); got {value!r}'
    )
  top, left, height, width, erase = erasing_box(
    seed,
    tf.shape(image)[0],
    tf.shape(image)[1],
    probability=probability,
    scale=scale,
    ratio=ratio,
  )
  # No erasing is an empty rectangle. Slices and concats copy each pixel
  # once, where a mask and a select would cost several passes on CPU.
  height = tf.where(erase, height, 0)
  width = tf.where(erase, width, 0)
  band = image[top : top + height]
  block = tf.broadcast_to(fill, tf.stack([height, width, tf.shape(image)[2]]))
  band = tf.concat([band[:, :left], block, band[:, left + width :]], axis=1)
  out = tf.concat([image[:top], band, image[top + height :]], axis=0)
  return tf.ensure_shape(out, image.shape)


def erasing_box(
  seed: tf.Tensor,
  image_height,
  image_width,
  *,
  probability: float = 0.5,
  scale: tuple[float, float] = (0.02, 0.33),
  ratio: tuple[float, float] = (0.3, 3.3),
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
  """The rectangle random_erasing erases: (top, left, height, width, erase).

  All int32 scalars but `erase`, a bool that is False when the coin said no
  or none of the attempts fitted.
  """
  _check(probability, scale, ratio)
  seed = tf.random.experimental.stateless_fold_in(seed, SEED_SALT)
  coin_seed, shape_seed, place_seed = tf.unstack(
    tf.random.experimental.stateless_split(seed, num=3)
  )
  image_height = tf.cast(image_height, tf.int32)
  image_width = tf.cast(image_width, tf.int32)
  # torchvision erases when torch.rand(1) < p.
  erase = tf.random.stateless_uniform([], coin_seed) < probability
  draws = tf.random.stateless_uniform([ATTEMPTS, 2], shape_seed)
  area = tf.cast(image_height * image_width, tf.float32) * (
    scale[0] + (scale[1] - scale[0]) * draws[:, 0]
  )
  log_low, log_high = math.log(ratio[0]), math.log(ratio[1])
  aspect = tf.exp(log_low + (log_high - log_low) * draws[:, 1])
  # Python's round() in torchvision and tf.round both round halves to even.
  heights = tf.cast(tf.round(tf.sqrt(area * aspect)), tf.int32)
  widths = tf.cast(tf.round(tf.sqrt(area / aspect)), tf.int32)
  fits = (heights < image_height) & (widths < image_width)
  first = tf.argmax(tf.cast(fits, tf.int32), output_type=tf.int32)
  height, width = heights[first], widths[first]
  erase = erase & tf.reduce_any(fits)
  # Uniform over the image_size - size + 1 placements along each axis.
  place = tf.random.stateless_uniform([2], place_seed)
  room = tf.stack([image_height - height + 1, image_width - width + 1])
  top, left = tf.unstack(
    tf.minimum(
      tf.cast(place * tf.cast(room, tf.float32), tf.int32),
      tf.maximum(room - 1, 0),
    )
  )
  return top, left, height, width, erase


def _check(probability, scale, ratio) -> None:
  if not 0.0 <= probability <= 1.0:
    raise ValueError(
      f'random_erasing probability must be in [0, 1]; got {probability!r}'
    )
  if len(scale) != 2 or not 0.0 < scale[0] <= scale[1] <= 1.0:
    raise ValueError(
      f'random_erasing scale must be (min, max) area fractions with '
      f'0 < min <= max <= 1; got {scale!r}'
    )
  if len(ratio) != 2 or not 0.0 < ratio[0] <= ratio[1]:
    raise ValueError(
      f'random_erasing ratio must be (min, max) aspect ratios with '
      f'0 < min <= max; got {ratio!r}'
    )
