"""Image preprocessing as tf ops: augmentation for training, crops for eval.

Every random op is stateless and takes an explicit seed, so an example's
augmentation depends only on (run seed, epoch, position in the epoch): the
same seed gives the same batches, and a restarted run continues exactly.

Images arrive as uint8 [H, W, C] and leave as float [H, W, C'] normalised
by the dataset's mean and std (C' = the model's channels).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import tensorflow as tf

CROPS = ('none', 'pad', 'random', 'resized')
# ImageNet convention: evaluate on a center crop of 87.5% of the resized image.
RESIZED_EVAL_FRACTION = 0.875


def _resize(image: tf.Tensor, size: int) -> tf.Tensor:
  return tf.image.resize(image, [size, size], method='bilinear')


def _pre_resize(image: tf.Tensor, resize: int) -> tf.Tensor:
  image = tf.cast(image, tf.float32)
  return _resize(image, resize) if resize else image


def rotate(image: tf.Tensor, radians: tf.Tensor) -> tf.Tensor:
  """Rotates [H, W, C] about its centre (bilinear, zero fill)."""
  height = tf.cast(tf.shape(image)[0], tf.float32)
  width = tf.cast(tf.shape(image)[1], tf.float32)
  cx, cy = (width - 1) / 2, (height - 1) / 2
  cos, sin = tf.cos(radians), tf.sin(radians)
  # Maps output (x, y) to input coordinates: a rotation about (cx, cy).
  transform = tf.stack(
    [
      cos,
      -sin,
      cx - cos * cx + sin * cy,
      sin,
      cos,
      cy - sin * cx - cos * cy,
      0.0,
      0.0,
    ]
  )
  rotated = tf.raw_ops.ImageProjectiveTransformV3(
    images=image[None],
    transforms=transform[None],
    output_shape=tf.shape(image)[:2],
    fill_value=0.0,
    interpolation='BILINEAR',
    fill_mode='CONSTANT',
  )
  return rotated[0]


def random_resized_crop(
  image: tf.Tensor,
  size: int,
  seed: tf.Tensor,
  area=(0.08, 1.0),
  ratio=(3 / 4, 4 / 3),
) -> tf.Tensor:
  """Inception-style crop: random area and aspect ratio, resized to size."""
  begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
    tf.shape(image),
    bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
    seed=seed,
    min_object_covered=0.1,
    aspect_ratio_range=ratio,
    area_range=area,
    max_attempts=10,
    use_image_if_no_bounding_boxes=True,
  )
  return _resize(tf.slice(image, begin, crop_size), size)


def _resize_shorter_side(image: tf.Tensor, size: int) -> tf.Tensor:
  shape = tf.cast(tf.shape(image)[:2], tf.float32)
  scale = size / tf.reduce_min(shape)
  new = tf.cast(tf.round(shape * scale), tf.int32)
  return tf.image.resize(image, new, method='bilinear')


def _center_crop(image: tf.Tensor, size: int) -> tf.Tensor:
  height, width = tf.shape(image)[0], tf.shape(image)[1]
  top, left = (height - size) // 2, (width - size) // 2
  return image[top : top + size, left : left + size]


def normalize(
  image: tf.Tensor, mean: Sequence[float], std: Sequence[float], channels: int
) -> tf.Tensor:
  """[0, 255] -> (x / 255 - mean) / std, grayscale -> RGB when channels = 3."""
  image = (image / 255.0 - tf.constant(mean, tf.float32)) / tf.constant(
    std, tf.float32
  )
  stored = image.shape[-1]
  if channels == stored:
    return image
  if stored == 1 and channels == 3:
    return tf.image.grayscale_to_rgb(image)
  raise ValueError(
    f'Cannot turn {stored}-channel images into {channels} '
    f'channels (config.channels)'
  )


# Folded into an example's seed for the draws added after the first four
# (which keep their streams, so that older runs resume onto the same data).
EXTRA_SEED_SALT = 0xA6E7


def train_image(
  image: tf.Tensor,
  seed: tf.Tensor,
  *,
  image_size: int,
  crop: str,
  crop_padding: int,
  resize: int,
  flip: bool,
  rotation: float,
  geometric_probability: float = 1.0,
) -> tf.Tensor:
  """One training image, uint8 [H, W, C] -> float [image_size, image_size, C].

  The crop and the rotation apply to a `geometric_probability` share of the
  images; the others get evaluation's crop (eval_image).
  """
  seeds = tf.random.experimental.stateless_split(seed, num=4)
  image = _pre_resize(image, resize)
  channels = image.shape[-1]
  shape = [image_size, image_size, channels]

  def cropped(image):
    if crop == 'pad':
      image = tf.pad(image, [[crop_padding] * 2, [crop_padding] * 2, [0, 0]])
      image = tf.image.stateless_random_crop(image, shape, seed=seeds[0])
    elif crop == 'random':
      image = tf.image.stateless_random_crop(image, shape, seed=seeds[0])
    elif crop == 'resized':
      image = random_resized_crop(image, image_size, seeds[0])
    elif crop == 'none':
      image = (
        _resize(image, image_size) if image.shape[0] != image_size else image
      )
    else:
      raise ValueError(f'augment.crop must be one of {CROPS}; got {crop!r}')
    return tf.ensure_shape(image, shape)

  def rotated(image):
    angle = tf.random.stateless_uniform([], seeds[2], -rotation, rotation) * (
      math.pi / 180
    )
    return rotate(image, angle)

  if geometric_probability >= 1:
    geometric = None
    image = cropped(image)
  else:
    extra = tf.random.experimental.stateless_fold_in(seeds[3], EXTRA_SEED_SALT)
    geometric = tf.random.stateless_uniform([], extra) < geometric_probability
    image = tf.cond(
      geometric,
      lambda: cropped(image),
      lambda: eval_image(image, image_size=image_size, crop=crop, resize=0),
    )
  if flip:
    image = tf.image.stateless_random_flip_left_right(image, seed=seeds[1])
  if rotation:
    image = (
      rotated(image)
      if geometric is None
      else tf.cond(geometric, lambda: rotated(image), lambda: image)
    )
  return tf.ensure_shape(image, shape)


def eval_view(
  image: tf.Tensor, *, image_size: int, crop: str, resize: int
) -> tf.Tensor:
  """The image eval crops are taken from (before the final crop)."""
  image = _pre_resize(image, resize)
  if crop == 'resized':
    return _resize_shorter_side(
      image, int(round(image_size / RESIZED_EVAL_FRACTION))
    )
  if crop in ('none', 'pad') and image.shape[0] != image_size:
    return _resize(image, image_size)
  return image


def eval_image(
  image: tf.Tensor, *, image_size: int, crop: str, resize: int
) -> tf.Tensor:
  """Single-crop evaluation: the centre crop of image_size."""
  view = eval_view(image, image_size=image_size, crop=crop, resize=resize)
  out = _center_crop(view, image_size)
  return tf.ensure_shape(out, [image_size, image_size, view.shape[-1]])


def ten_crop(
  image: tf.Tensor, *, image_size: int, crop: str, resize: int
) -> tf.Tensor:
  """The 4 corner crops and the centre crop, then their mirror images.

  Returns [10, image_size, image_size, C].
  """
  view = eval_view(image, image_size=image_size, crop=crop, resize=resize)
  height, width = tf.shape(view)[0], tf.shape(view)[1]
  s = image_size
  crops = [
    view[:s, :s],
    view[:s, width - s :],
    view[height - s :, :s],
    view[height - s :, width - s :],
    _center_crop(view, s),
  ]
  crops = tf.stack(crops)
  crops = tf.concat([crops, tf.reverse(crops, axis=[2])], axis=0)
  return tf.ensure_shape(crops, [10, s, s, view.shape[-1]])
