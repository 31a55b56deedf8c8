"""From a trained run to answers: restore a checkpoint, preprocess, predict.

  from densenet_flax.inference import Classifier

  classifier = Classifier.from_workdir('runs/fer2013')   # the best checkpoint
  probabilities = classifier.predict(images)             # [N, num_classes]
  classifier.class_names                                 # ('angry', ...)

`predict` takes uint8 or float arrays in 0-255, [N, H, W] or [N, H, W, C], at
any size, and prepares them exactly as evaluation does (evaluate.py's
tf.data ops, written here in JAX): resize to the dataset's stored size, the
config's `augment.resize`, the evaluation view and centre crop, channels,
mean/std. Only params and BN statistics are restored (no optimizer). The
model runs jitted at a few fixed batch sizes, so a new N never recompiles.

No TensorFlow on this path: it runs where TensorFlow is not installed.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from densenet_flax import recipe
from densenet_flax import run_directory
from densenet_flax.data import specs

# The evaluation view of crop='resized' (ImageNet): the shorter side resized
# to image_size / 0.875, then the centre crop (data/augment.py).
RESIZED_EVAL_FRACTION = 0.875
# RGB -> gray, ITU-R 601 luma (tf.image.rgb_to_grayscale's and OpenCV's).
GRAY_WEIGHTS = np.array([0.2989, 0.5870, 0.1140], np.float32)
BATCH_SIZES = (1, 8, 64)
TTA_MODES = (None, 'ten_crop')

log = logging.getLogger(__name__)


class Classifier:
  """A trained DenseNet with its preprocessing and class names.

  Args:
    model: the Flax module (a models.DenseNet).
    variables: its {'params', 'batch_stats'}.
    config: the run's config (image size, channels, augment.*, dataset).
    mean: the normalisation the run trained with: per stored channel, on the
      [0, 1] scale (inputs become (x / 255 - mean) / std).
    std: likewise.
    step: the checkpoint's step, kept as `self.step`; None if unknown.
    batch_sizes: the batch sizes the model is compiled for; a batch of N is
      padded up to the next one, larger batches are split.
  """

  def __init__(
    self,
    model,
    variables: dict,
    config: ml_collections.ConfigDict,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    step: int | None = None,
    batch_sizes: Sequence[int] = BATCH_SIZES,
  ):
    self.model = model
    self.variables = variables
    self.config = config
    self.spec = specs.spec_for(config)
    self.mean = np.asarray(mean, np.float32)
    self.std = np.asarray(std, np.float32)
    self.step = step
    self.batch_sizes = tuple(sorted(batch_sizes))
    self.class_names = tuple(
      self.spec.class_names
      or (f'class_{i}' for i in range(self.spec.num_classes))
    )
    self._apply = jax.jit(functools.partial(_probabilities, model))

  @classmethod
  def from_workdir(
    cls,
    workdir: str,
    checkpoint: str | int = 'best',
    *,
    batch_sizes: Sequence[int] = BATCH_SIZES,
  ) -> Classifier:
    """The run in `workdir` at `checkpoint` ('best', 'latest' or a step).

    A run that kept an EMA of its weights (config.ema_decay) gives the EMA,
    the model its training evaluated.

    Args:
      workdir: a training workdir: its config.json, the normalisation it
        recorded, and its checkpoints.
      checkpoint: 'best' (by config.select_metric among the evaluated
        checkpoints), 'latest' (skipping a damaged newest one for the one
        before) or a step number.
      batch_sizes: as for `Classifier`.

    Returns:
      A Classifier with the checkpoint's params and BN statistics, and its
      step.

    Raises:
      FileNotFoundError: no config.json in `workdir`; no normalisation
        recorded for a dataset without fixed statistics; no checkpoints, none
        evaluated (for 'best'), or none at the step asked for.
    """
    config = run_directory.load_config(workdir)
    model, variables, step = run_directory.restore_variables(
      workdir, checkpoint, config=config
    )
    mean, std = run_directory.normalization(config, workdir)
    log.info('Classifier from %s, step %d', workdir, step)
    return cls(
      model, variables, config, mean, std, step=step, batch_sizes=batch_sizes
    )

  @property
  def input_shape(self) -> tuple[int, int, int]:
    """(height, width, channels) the model takes."""
    return recipe.input_shape(self.config)

  @property
  def stored_size(self) -> int | None:
    """The image size the dataset stores (48 for FER), None when it varies."""
    return self.spec.image_size

  # --- preprocessing ---------------------------------------------------------

  def preprocess(self, images, tta: str | None = None) -> np.ndarray:
    """0-255 images -> normalised model inputs, as evaluation makes them.

    Args:
      images: integer or float, 0-255, [N, H, W] or [N, H, W, C] at any
        H x W (C = the dataset's stored channels; a grayscale model also
        takes RGB, converted with the ITU-R 601 weights, and a color model
        gray, repeated).
      tta: None for the evaluation's single crop, or 'ten_crop': the 4
        corner and the centre crops and their mirror images (the config's
        augment.crop must be 'random' or 'resized').

    Returns:
      float32 [N, S, S, C'] (or [N, 10, S, S, C'] with tta='ten_crop'):
      S = config.image_size, C' = config.channels (gray is repeated for an
      RGB model).

    Raises:
      ValueError: an unknown `tta`, 'ten_crop' with a config that does not
        crop, or images of another rank, dtype or channel count.
    """
    return self._normalize(self.crops(images, tta))

  def crops(self, images, tta: str | None = None) -> np.ndarray:
    """The 0-255 crops the model sees, before mean/std: [N, S, S, C].

    What an exported model takes (it normalises inside).

    Args:
      images: as for `preprocess`.
      tta: as for `preprocess`.

    Returns:
      float32 [N, S, S, C] (or [N, 10, S, S, C] with tta='ten_crop'):
      S = config.image_size, C = the dataset's stored channels.

    Raises:
      ValueError: as `preprocess`.
    """
    if tta not in TTA_MODES:
      raise ValueError(f'tta must be one of {TTA_MODES}; got {tta!r}')
    if tta == 'ten_crop' and self.config.augment.crop not in (
      'random',
      'resized',
    ):
      raise ValueError(
        f'ten_crop needs crops smaller than the image (config.augment.crop '
        f'"random" or "resized"); got {self.config.augment.crop!r}'
      )
    images = self._as_stored_channels(images)
    size = self.config.image_size
    crop = _ten_crop if tta == 'ten_crop' else _center_crop
    out = [crop(self._eval_view(image), size) for image in images]
    if not out:
      shape = (10, size, size) if tta else (size, size)
      return np.zeros((0, *shape, images.shape[-1]), np.float32)
    return np.stack(out)

  def _as_stored_channels(self, images) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim == 3:
      images = images[..., None]
    if images.ndim != 4:
      raise ValueError(
        f'images must be [N, H, W] or [N, H, W, C]; got shape {images.shape}'
      )
    if not (
      np.issubdtype(images.dtype, np.integer)
      or np.issubdtype(images.dtype, np.floating)
    ):
      raise ValueError(f'images must be numbers in 0-255; got {images.dtype}')
    channels, stored = images.shape[-1], self.spec.channels
    if channels == 3 and stored == 1:
      images = images.astype(np.float32) @ GRAY_WEIGHTS[:, None]
    elif channels == 1 and stored == 3:  # a gray photo for a color run
      images = np.repeat(images, 3, axis=-1)
    elif channels != stored:
      raise ValueError(
        f'images have {channels} channels; {self.spec.name} models take '
        f'{stored}'
        + (' (or 3, converted to grayscale)' if stored == 1 else ' (or 1)')
      )
    return images.astype(np.float32)

  def _eval_view(self, image: np.ndarray) -> np.ndarray:
    """data/augment.py's eval_view, after bringing `image` to the stored size."""
    size, crop = self.config.image_size, self.config.augment.crop
    resize = self.config.augment.get('resize', 0)
    if self.stored_size and image.shape[:2] != (self.stored_size,) * 2:
      image = _resize(image, self.stored_size, self.stored_size)
    if resize:
      image = _resize(image, resize, resize)
    if crop == 'resized':
      short = int(round(size / RESIZED_EVAL_FRACTION))
      height, width = image.shape[:2]
      scale = short / min(height, width)
      return _resize(
        image, int(round(height * scale)), int(round(width * scale))
      )
    if crop in ('none', 'pad') and image.shape[0] != size:
      return _resize(image, size, size)
    return image

  def _normalize(self, images: np.ndarray) -> np.ndarray:
    """(x / 255 - mean) / std in float32, then gray -> RGB if the model wants."""
    images = (
      images.astype(np.float32) / np.float32(255.0) - self.mean
    ) / self.std
    if self.config.channels == images.shape[-1]:
      return images
    return np.repeat(images, self.config.channels, axis=-1)

  # --- prediction ------------------------------------------------------------

  def predict(self, images, tta: str | None = None) -> np.ndarray:
    """Class probabilities [N, num_classes] (float32) of 0-255 images.

    Args:
      images: as for `preprocess`.
      tta: None, or 'ten_crop' to average the probabilities of 10 crops per
        image (as for `preprocess`).

    Returns:
      float32 [N, num_classes], columns in the order of `class_names`.

    Raises:
      ValueError: as `preprocess`.
    """
    inputs = self.preprocess(images, tta)
    return self.predict_preprocessed(inputs)

  def predict_preprocessed(self, inputs: np.ndarray) -> np.ndarray:
    """Probabilities of already normalised inputs [N, S, S, C] or [N, T, ...].

    Batches are padded to the compiled sizes; T test-time crops of an image
    have their probabilities averaged, as evaluation averages them.

    Args:
      inputs: as `preprocess` returns them: [N, S, S, C'] or [N, T, S, S, C'],
        copied into float32 batches.

    Returns:
      float32 [N, num_classes], columns in the order of `class_names`.
    """
    outputs = []
    largest = self.batch_sizes[-1]
    for start in range(0, len(inputs), largest):
      chunk = inputs[start : start + largest]
      padded = next(b for b in self.batch_sizes if b >= len(chunk))
      batch = np.zeros((padded, *chunk.shape[1:]), np.float32)
      batch[: len(chunk)] = chunk
      outputs.append(
        np.asarray(self._apply(self.variables, batch))[: len(chunk)]
      )
    if not outputs:
      return np.zeros((0, len(self.class_names)), np.float32)
    return np.concatenate(outputs)


def _probabilities(model, variables, batch):
  """Softmax of the logits; with a crop axis, the mean over the crops."""
  crops = batch.shape[1] if batch.ndim == 5 else 1
  flat = batch.reshape(-1, *batch.shape[-3:])
  logits = model.apply(variables, flat, train=False)
  return jax.nn.softmax(logits).reshape(batch.shape[0], crops, -1).mean(1)


def _resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
  """Bilinear with half-pixel centres and no antialiasing: tf.image.resize's."""
  old_h, old_w = image.shape[:2]
  if (old_h, old_w) == (height, width):
    return image
  out = jax.image.scale_and_translate(
    jnp.asarray(image),
    (height, width, image.shape[2]),
    (0, 1),
    jnp.array([height / old_h, width / old_w], jnp.float32),
    jnp.zeros(2, jnp.float32),
    method='linear',
    antialias=False,
  )
  return np.asarray(out)


def _center_crop(image: np.ndarray, size: int) -> np.ndarray:
  height, width = image.shape[:2]
  top, left = (height - size) // 2, (width - size) // 2
  return image[top : top + size, left : left + size]


def _ten_crop(image: np.ndarray, size: int) -> np.ndarray:
  """The 4 corners and the centre, then their mirror images: [10, S, S, C]."""
  height, width = image.shape[:2]
  crops = np.stack(
    [
      image[:size, :size],
      image[:size, width - size :],
      image[height - size :, :size],
      image[height - size :, width - size :],
      _center_crop(image, size),
    ]
  )
  return np.concatenate([crops, crops[:, :, ::-1]])
