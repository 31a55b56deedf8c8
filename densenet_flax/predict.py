"""The predict command line: images, folders and videos -> probabilities.

  python predict.py --workdir runs/fer2013 photo.jpg photos/ clip.mp4 \
      [--faces] [--every 10] [--output out.jsonl|out.csv] [--annotate DIR] \
      [--checkpoint best|latest|STEP] [--tta ten_crop]

Folders are searched recursively for images and videos; a video is read
every `--every` frames. Progress bars (stderr) follow the files of a folder
and the frames of a video. Without --faces each image (frame) is classified
whole, as a dataset image would be; with --faces each face found is (FER
models). Writes one row per image or face: path, frame, box, probabilities,
label, score. A file that cannot be read is reported with its path and
skipped; the skipped files are listed at the end and the exit status is 1.
"""

from __future__ import annotations

import csv
import json
import os
import sys
from collections.abc import Iterator

import numpy as np

IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg', '.bmp', '.gif', '.tif', '.tiff',
                  '.webp', '.pgm', '.ppm')
VIDEO_SUFFIXES = ('.mp4', '.avi', '.mov', '.mkv', '.webm', '.m4v', '.mpg',
                  '.mpeg')


class UnreadableFile(Exception):
  """A file given (or found) that is not an image or video we can decode."""


def expand(paths: list[str]) -> list[str]:
  """Files named, and the image/video files under folders named (sorted)."""
  files = []
  for path in paths:
    if os.path.isdir(path):
      found = sorted(
          os.path.join(root, name) for root, _, names in os.walk(path)
          for name in names
          if name.lower().endswith(IMAGE_SUFFIXES + VIDEO_SUFFIXES)
          and not name.startswith('.'))
      if not found:
        raise FileNotFoundError(
            f'{path}: no images or videos in this folder (looked for '
            f'{" ".join(IMAGE_SUFFIXES + VIDEO_SUFFIXES)}, recursively)')
      files += found
    elif os.path.exists(path):
      files.append(path)
    else:
      raise FileNotFoundError(f'{path}: no such file or folder')
  return files


def read_image(path: str) -> np.ndarray:
  """[H, W] gray or [H, W, 3] RGB uint8, or UnreadableFile."""
  import cv2

  image = cv2.imread(path, cv2.IMREAD_UNCHANGED)
  if image is None:
    raise UnreadableFile(f'{path}: not an image OpenCV can decode')
  if image.dtype != np.uint8:
    image = cv2.normalize(image, None, 0, 255, cv2.NORM_MINMAX).astype(
        np.uint8)
  if image.ndim == 3 and image.shape[2] == 4:
    image = cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
  elif image.ndim == 3:
    image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
  return image


def frames(path: str, every: int, progress: bool = False
           ) -> Iterator[tuple[int | None, np.ndarray]]:
  """(frame index or None, image) of an image file or of every Nth frame."""
  if not path.lower().endswith(VIDEO_SUFFIXES):
    yield None, read_image(path)
    return
  import cv2
  from tqdm import tqdm

  video = cv2.VideoCapture(path)
  if not video.isOpened():
    raise UnreadableFile(f'{path}: not a video OpenCV can decode')
  index = read = 0
  bar = tqdm(total=int(video.get(cv2.CAP_PROP_FRAME_COUNT)) or None,
             unit='frame', desc=os.path.basename(path), leave=False,
             disable=not progress, file=sys.stderr)
  try:
    while True:
      ok = video.grab()
      if not ok:
        break
      bar.update(1)
      if index % every == 0:
        ok, frame = video.retrieve()
        if not ok:
          raise UnreadableFile(f'{path}: frame {index} cannot be decoded')
        read += 1
        yield index, cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
      index += 1
  finally:
    bar.close()
    video.release()
  if not read:
    raise UnreadableFile(f'{path}: no frames could be read')


def classify_whole(classifier, image: np.ndarray, tta) -> list[dict]:
  """One answer for the whole image (the classifier turns RGB to gray)."""
  from densenet_flax import faces

  if image.ndim == 2 and classifier.spec.channels == 3:
    image = np.repeat(image[..., None], 3, axis=-1)
  probabilities = classifier.predict(image[None], tta=tta)[0]
  return [faces.result(None, probabilities, classifier.class_names)]


class Writer:
  """Rows to .jsonl or .csv (one per image or face)."""

  def __init__(self, path: str | None, class_names):
    self.path, self.class_names = path, list(class_names)
    self._file = open(path, 'w', newline='') if path else None
    self._csv = None
    if path and path.endswith('.csv'):
      self._csv = csv.writer(self._file)
      self._csv.writerow(['path', 'frame', 'x', 'y', 'w', 'h', 'label',
                          'score'] + self.class_names)
    elif path and not path.endswith('.jsonl'):
      raise ValueError(f'--output {path}: expected a .jsonl or .csv file')

  def write(self, row: dict) -> None:
    if self._csv is not None:
      box = row['box'] or ('',) * 4
      self._csv.writerow([row['path'], '' if row['frame'] is None else
                          row['frame'], *box, row['label'],
                          f'{row["score"]:.6f}'] +
                         [f'{row["probabilities"][n]:.6f}'
                          for n in self.class_names])
    elif self._file is not None:
      self._file.write(json.dumps(row) + '\n')

  def close(self) -> None:
    if self._file is not None:
      self._file.close()


def annotate(image: np.ndarray, answers: list[dict], path: str) -> None:
  """Writes `image` with each answer's box and label drawn on it."""
  import cv2

  canvas = image if image.ndim == 3 else cv2.cvtColor(image,
                                                      cv2.COLOR_GRAY2RGB)
  canvas = cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR)
  scale = max(canvas.shape[:2]) / 600
  for answer in answers:
    x, y, w, h = answer['box'] or (0, 0, canvas.shape[1], canvas.shape[0])
    cv2.rectangle(canvas, (x, y), (x + w - 1, y + h - 1), (0, 200, 0),
                  max(1, round(2 * scale)))
    cv2.putText(canvas, f'{answer["label"]} {answer["score"]:.2f}',
                (x, max(y - 4, 12)), cv2.FONT_HERSHEY_SIMPLEX,
                max(0.3, 0.6 * scale), (0, 200, 0), max(1, round(scale)))
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  cv2.imwrite(path, canvas)


def annotated_name(directory: str, path: str, frame: int | None) -> str:
  stem = os.path.splitext(os.path.basename(path))[0]
  return os.path.join(directory, stem + ('' if frame is None else
                                         f'-frame{frame:06d}') + '.png')


def run(classifier, paths: list[str], *, faces: bool = False, every: int = 1,
        output: str | None = None, annotate_dir: str | None = None,
        tta: str | None = None, progress: bool = True) -> tuple[list, list]:
  """Predicts over `paths`; returns (rows, skipped 'path: reason' lines)."""
  from tqdm import tqdm

  if every < 1:
    raise ValueError(f'--every {every}: expected a positive frame interval')
  files = expand(paths)
  detector = None
  if faces:
    from densenet_flax.faces import FaceEmotionDetector
    detector = FaceEmotionDetector(classifier)
  writer = Writer(output, classifier.class_names)
  rows, skipped = [], []
  bar = tqdm(files, unit='file', disable=not progress or len(files) < 2,
             file=sys.stderr)
  try:
    for path in bar:
      try:
        for frame, image in frames(path, every, progress):
          answers = (detector.detect(image, tta=tta) if detector else
                     classify_whole(classifier, image, tta))
          for answer in answers:
            row = {'path': path, 'frame': frame, 'box': answer['box'],
                   'probabilities': answer['emotions'],
                   'label': answer['label'], 'score': answer['score']}
            rows.append(row)
            writer.write(row)
          if annotate_dir:
            annotate(image, answers, annotated_name(annotate_dir, path,
                                                    frame))
      except UnreadableFile as e:
        skipped.append(str(e))
        bar.write(f'skipped {e}')
  finally:
    writer.close()
  return rows, skipped


def main(argv=None):
  from absl import app
  from absl import flags

  flags.DEFINE_string('workdir', None, 'A training workdir.')
  flags.mark_flag_as_required('workdir')
  flags.DEFINE_string('checkpoint', 'best', "'best', 'latest' or a step.")
  flags.DEFINE_bool('faces', False, 'Find faces and classify each (FER).')
  flags.DEFINE_integer('every', 1, 'Read every Nth frame of a video.')
  flags.DEFINE_string('output', None, 'Write rows to this .jsonl or .csv.')
  flags.DEFINE_string('annotate', None, 'Write annotated images here.')
  flags.DEFINE_enum('tta', None, ['ten_crop'], 'Test-time augmentation.')

  def command(args):
    from densenet_flax import accelerators
    from densenet_flax import cli
    from densenet_flax.inference import Classifier

    f = flags.FLAGS
    if len(args) < 2:
      raise app.UsageError('Name at least one image, folder or video.')
    cli.set_log_levels()
    accelerators.log_backend()
    try:
      classifier = Classifier.from_workdir(f.workdir, f.checkpoint)
      rows, skipped = run(classifier, args[1:], faces=f.faces, every=f.every,
                          output=f.output, annotate_dir=f.annotate,
                          tta=f.tta)
    except (FileNotFoundError, ValueError) as e:
      print(f'error: {e}', file=sys.stderr)
      sys.exit(2)
    if not f.output:
      for row in rows:
        print(json.dumps(row))
    print(f'{len(rows)} prediction(s)' + (f', written to {f.output}'
                                           if f.output else ''),
          file=sys.stderr)
    if skipped:
      print(f'skipped {len(skipped)} file(s):\n  ' + '\n  '.join(skipped),
            file=sys.stderr)
      sys.exit(1)

  app.run(command, argv=argv)


if __name__ == '__main__':
  main()
