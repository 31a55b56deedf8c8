"""Faces in photos and video frames -> emotions, with a trained FER model.

  from densenet_flax.faces import FaceEmotionDetector
  from densenet_flax.inference import Classifier

  detector = FaceEmotionDetector(Classifier.from_workdir('runs/fer2013'))
  detector.detect(image)   # image: [H, W, 3] RGB or [H, W] gray, uint8
  # [{'box': (x, y, w, h), 'emotions': {'angry': 0.01, ...},
  #   'label': 'happy', 'score': 0.91}, ...]

The face detector is OpenCV's Haar cascade (opencv-python-headless 4.x ships
its weights in `cv2.data.haarcascades`; 5.x dropped them). It needs nothing
downloaded, no TensorFlow (MTCNN, the other offline candidate, runs on
TensorFlow, which the inference path keeps out) and a few milliseconds per
photo on a CPU; its eye cascade gives what alignment needs. Any other
detector can be passed as a function gray image -> [(x, y, w, h), ...].

What happens to each face, stated here rather than hidden:
  1. detection on the grayscale image (faces of at least `min_face` px);
  2. alignment: when the eye cascade finds two eyes in the upper half of the
     face, the image is rotated about the face centre so they are level;
  3. crop: the box grown by `margin` of its size on every side (edges
     replicated past the image border), from the gray image for a grayscale
     run and from the RGB photo for a color one;
  4. resize to the dataset's stored size (48x48 for FER2013, 100x100 for
     RAF-DB, 224x224 for AffectNet) with area averaging, then the
     classifier's own evaluation preprocessing (resize, crop, mean/std).
Steps 2 and 3 frame the face the way the run's dataset frames its faces
(data/specs.py, FaceFraming): FER2013's faces have some room around them
(margin 0.1, aligned), RAF-DB's are aligned by the eyes with some room
(margin 0.15), AffectNet's are its face boxes as they are (margin 0, not
aligned). `margin` and `align` override that.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence

import numpy as np

from densenet_flax import inference

Box = tuple[int, int, int, int]


def _cv2():
  try:
    import cv2
  except ImportError as e:  # pragma: no cover - an optional extra
    raise ImportError(
      'Face detection needs OpenCV: pip install '
      '"opencv-python-headless>=4.8,<5"'
    ) from e
  if not hasattr(cv2, 'CascadeClassifier'):
    raise ImportError(
      f'OpenCV {cv2.__version__} has no Haar cascades (5.x '
      f'dropped them): pip install '
      f'"opencv-python-headless>=4.8,<5"'
    )
  return cv2


def to_gray(image: np.ndarray) -> np.ndarray:
  """[H, W], [H, W, 1] or [H, W, 3] RGB (uint8 or 0-255 floats) -> [H, W] uint8."""
  image = np.asarray(image)
  if image.ndim == 3 and image.shape[2] == 1:
    image = image[..., 0]
  if image.ndim == 3 and image.shape[2] == 3:
    image = image.astype(np.float32) @ inference.GRAY_WEIGHTS
  if image.ndim != 2:
    raise ValueError(
      f'expected an image [H, W] or [H, W, 1|3]; got shape {image.shape}'
    )
  return np.clip(np.round(image), 0, 255).astype(np.uint8)


class FaceEmotionDetector:
  """Finds faces and classifies each one's expression.

  Args:
    classifier: an inference.Classifier (a run on FER2013, FER+, RAF-DB,
      AffectNet or class folders).
    detector: 'haar' (OpenCV's frontal-face cascade) or a function
      gray [H, W] uint8 -> [(x, y, w, h), ...].
    margin: the crop around a box, as a fraction of its size on each side;
      None: as the run's dataset frames its faces.
    min_face: smallest face in pixels that is looked for.
    align: level the eyes when both are found; None: as the run's dataset.
  """

  def __init__(
    self,
    classifier,
    detector: str | Callable = 'haar',
    *,
    margin: float | None = None,
    min_face: int = 30,
    align: bool | None = None,
  ):
    cv2 = _cv2()
    self.classifier = classifier
    framing = classifier.spec.framing
    self.margin = framing.margin if margin is None else margin
    self.align = framing.align if align is None else align
    # Color runs classify RGB crops; grayscale runs gray ones.
    self.color = classifier.spec.channels == 3
    self.min_face = min_face
    self.face_size = classifier.stored_size or classifier.input_shape[0]
    if detector == 'haar':
      cascade = cv2.CascadeClassifier(
        cv2.data.haarcascades + 'haarcascade_frontalface_default.xml'
      )
      self._find = lambda gray: cascade.detectMultiScale(
        gray, scaleFactor=1.1, minNeighbors=5, minSize=(min_face, min_face)
      )
    elif callable(detector):
      self._find = detector
    else:
      raise ValueError(
        f"detector must be 'haar' or a function; got {detector!r}"
      )
    self._eyes = cv2.CascadeClassifier(
      cv2.data.haarcascades + 'haarcascade_eye.xml'
    )

  def find_faces(self, gray: np.ndarray) -> list[Box]:
    """Face boxes (x, y, w, h), left to right."""
    boxes = [tuple(int(v) for v in box) for box in self._find(gray)]
    return sorted(boxes)

  def face_crops(self, image: np.ndarray, boxes: Sequence[Box]) -> np.ndarray:
    """[len(boxes), S, S] (gray runs) or [len(boxes), S, S, 3] (color runs)
    uint8 faces of `image` (RGB or gray), aligned and cropped as documented."""
    return self._crops(image, to_gray(image), boxes)

  def _crops(
    self, image: np.ndarray, gray: np.ndarray, boxes: Sequence[Box]
  ) -> np.ndarray:
    """face_crops, with `image`'s gray version (to_gray) given."""
    source = self._source(image, gray)
    if not boxes:
      return np.zeros((0, *(self.face_size,) * 2, *source.shape[2:]), np.uint8)
    return np.stack([self._crop(source, gray, box) for box in boxes])

  def _source(self, image: np.ndarray, gray: np.ndarray) -> np.ndarray:
    """The pixels crops come from: RGB uint8 for a color run, else `gray`,
    the image's to_gray."""
    if not self.color:
      return gray
    image = np.asarray(image)
    if image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 1):
      image = np.repeat(gray[..., None], 3, axis=-1)
    return np.clip(np.round(image), 0, 255).astype(np.uint8)

  def detect(
    self,
    image: np.ndarray,
    tta: str | None = None,
    boxes: Sequence[Box] | None = None,
  ) -> list[dict]:
    """One dict per face: box, emotions (probabilities), label, score.

    Args:
      image: [H, W, 3] RGB or [H, W] gray, uint8.
      tta: None or 'ten_crop' (see inference.Classifier.predict).
      boxes: faces found elsewhere, (x, y, w, h) in this image's pixels:
        detection is skipped and each box goes through the same alignment,
        margin and crop. A box is clipped to the image; one with no pixels
        inside it is an error.
    Returns:
      One dict per box, left to right (in the given order for `boxes`).
    """
    gray = to_gray(image)
    boxes = (
      self.find_faces(gray)
      if boxes is None
      else [_checked_box(box, gray.shape) for box in boxes]
    )
    if not boxes:
      return []
    probabilities = self.classifier.predict(
      self._crops(image, gray, boxes), tta=tta
    )
    return [
      result(box, p, self.classifier.class_names)
      for box, p in zip(boxes, probabilities)
    ]

  def track(
    self,
    frames: Iterable,
    fps: float | None = None,
    *,
    tta: str | None = None,
    min_iou: float = 0.3,
    max_missed: int = 2,
  ) -> Iterator[list[dict]]:
    """Faces followed across video frames; yields one list per frame.

    Args:
      frames: images, or (frame index, image) pairs (e.g. every Nth frame).
      fps: the video's frame rate; gives each answer its `time_s`.
      min_iou, max_missed: see video.FaceTracker (what ends a track).
    Yields:
      detect()'s dicts for one frame, each with `frame`, `time_s` (None
      without fps) and `track`, an id that stays with a face from frame to
      frame.
    """
    from densenet_flax import video

    tracker = video.FaceTracker(min_iou=min_iou, max_missed=max_missed)
    for position, item in enumerate(frames):
      frame, image = item if isinstance(item, tuple) else (position, item)
      answers = self.detect(image, tta=tta)
      ids = tracker.update([answer['box'] for answer in answers])
      for answer, track_id in zip(answers, ids):
        answer.update(
          frame=frame,
          track=track_id,
          time_s=None if fps is None else frame / fps,
        )
      yield answers

  def _crop(self, source: np.ndarray, gray: np.ndarray, box: Box) -> np.ndarray:
    """One face of `source` (gray [H, W] or RGB [H, W, 3]); the eyes are
    found on `gray`."""
    cv2 = _cv2()
    x, y, w, h = box
    if self.align:
      angle = self._eye_angle(gray, box)
      if angle:
        rotation = cv2.getRotationMatrix2D((x + w / 2, y + h / 2), angle, 1.0)
        source = cv2.warpAffine(
          source,
          rotation,
          gray.shape[::-1],
          flags=cv2.INTER_LINEAR,
          borderMode=cv2.BORDER_REPLICATE,
        )
    pad = int(round(self.margin * max(w, h)))
    padded = cv2.copyMakeBorder(
      source, pad, pad, pad, pad, cv2.BORDER_REPLICATE
    )
    face = padded[y : y + h + 2 * pad, x : x + w + 2 * pad]
    return cv2.resize(
      face, (self.face_size, self.face_size), interpolation=cv2.INTER_AREA
    )

  def _eye_angle(self, gray: np.ndarray, box: Box) -> float:
    """Degrees to rotate by so the eyes are level; 0 without two eyes."""
    x, y, w, h = box
    upper = gray[y : y + h // 2, x : x + w]
    eyes = self._eyes.detectMultiScale(
      upper, scaleFactor=1.1, minNeighbors=5, minSize=(max(w // 8, 5),) * 2
    )
    if len(eyes) < 2:
      return 0.0
    eyes = sorted(eyes, key=lambda e: -e[2] * e[3])[:2]
    (lx, ly), (rx, ry) = sorted(
      (ex + ew / 2, ey + eh / 2) for ex, ey, ew, eh in eyes
    )
    angle = math.degrees(math.atan2(ry - ly, rx - lx))
    return angle if abs(angle) <= 30 else 0.0  # a steeper pair is a miss


def _checked_box(box, shape: tuple[int, int]) -> Box:
  """A given (x, y, w, h) as ints, clipped to the image [H, W]."""
  try:
    x, y, w, h = (int(round(float(v))) for v in box)
  except (TypeError, ValueError):
    raise ValueError(f'box {box!r}: expected (x, y, w, h) numbers') from None
  height, width = shape
  left, top = max(x, 0), max(y, 0)
  right, bottom = min(x + w, width), min(y + h, height)
  if w <= 0 or h <= 0 or right <= left or bottom <= top:
    raise ValueError(
      f'box {tuple(box)}: expected a positive width and height '
      f'inside the {width}x{height} image'
    )
  return left, top, right - left, bottom - top


def result(
  box: Box | None, probabilities: np.ndarray, class_names: Sequence[str]
) -> dict:
  """The plain-data answer for one face (or one whole image, box None)."""
  best = int(np.argmax(probabilities))
  return {
    'box': box,
    'emotions': {name: float(p) for name, p in zip(class_names, probabilities)},
    'label': class_names[best],
    'score': float(probabilities[best]),
  }
