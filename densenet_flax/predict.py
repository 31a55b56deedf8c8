"""The predict command line: images, folders and videos -> probabilities.

  python predict.py --workdir runs/fer2013 photo.jpg photos/ clip.mp4 \
      [--faces] [--every 10 | --fps 5] [--output out.jsonl|out.csv] \
      [--annotate DIR] [--summary S.json] [--timeline T.png] \
      [--checkpoint best|latest|STEP] [--tta ten_crop]
  python predict.py --workdir runs/fer2013 --boxes boxes.csv

Folders are searched recursively for images and videos. Images are read as
a viewer shows them (EXIF orientation applied), so boxes are in the upright
image's coordinates. A video is read every `--every` frames, or `--fps`
frames per second. Without --faces each image (frame) is classified whole,
as a dataset image would be; with --faces each face found is (FER models);
with --boxes the faces given in a CSV (path,x,y,w,h) are, without detection.
Writes one row per image or face: path, frame, time_s, track, box,
probabilities, label, score. In a video, `track` follows a face across the
sampled frames (video.py says what ends a track), and a summary per video
(per track: first and last time, frames, mean probabilities, dominant
emotion) goes to --summary, by default beside --output. Progress bars
(stderr) follow the files of a folder and the frames of a video. A file that
cannot be read is reported with its path and skipped; the skipped files are
listed at the end and the exit status is 1.
"""

from __future__ import annotations

import csv
import json
import os
import sys
from collections.abc import Iterator

import numpy as np

IMAGE_SUFFIXES = (
  '.png',
  '.jpg',
  '.jpeg',
  '.bmp',
  '.gif',
  '.tif',
  '.tiff',
  '.webp',
  '.pgm',
  '.ppm',
)
VIDEO_SUFFIXES = (
  '.mp4',
  '.avi',
  '.mov',
  '.mkv',
  '.webm',
  '.m4v',
  '.mpg',
  '.mpeg',
)


class UnreadableFile(Exception):
  """A file given (or found) that is not an image or video we can decode."""


def expand(paths: list[str]) -> list[str]:
  """Files named, and the image/video files under folders named (sorted)."""
  files = []
  for path in paths:
    if os.path.isdir(path):
      found = sorted(
        os.path.join(root, name)
        for root, _, names in os.walk(path)
        for name in names
        if name.lower().endswith(IMAGE_SUFFIXES + VIDEO_SUFFIXES)
        and not name.startswith('.')
      )
      if not found:
        raise FileNotFoundError(
          f'{path}: no images or videos in this folder (looked for '
          f'{" ".join(IMAGE_SUFFIXES + VIDEO_SUFFIXES)}, recursively)'
        )
      files += found
    elif os.path.exists(path):
      files.append(path)
    else:
      raise FileNotFoundError(f'{path}: no such file or folder')
  return files


# EXIF Orientation (tag 0x0112) -> the numpy view that shows the image as a
# viewer does, one per value of the standard (1 is upright).
_ORIENTATIONS = {
  1: lambda a: a,
  2: lambda a: a[:, ::-1],  # mirrored left-right
  3: lambda a: a[::-1, ::-1],  # upside down
  4: lambda a: a[::-1],  # mirrored top-bottom
  5: lambda a: a.swapaxes(0, 1),  # transposed
  6: lambda a: np.rot90(a, -1),  # stored rotated 90 deg left
  7: lambda a: a[::-1, ::-1].swapaxes(0, 1),  # transversed
  8: lambda a: np.rot90(a, 1),  # stored rotated 90 deg right
}


def exif_orientation(path: str) -> int:
  """The EXIF Orientation value (1-8) of an image file; 1 without one.

  OpenCV's IMREAD_UNCHANGED, which keeps 16-bit and alpha images as stored,
  ignores the tag, so Pillow reads it (the header only, not the pixels).
  """
  from PIL import Image

  try:
    with Image.open(path) as image:
      value = image.getexif().get(0x0112, 1)
  except (OSError, SyntaxError, ValueError):
    return 1  # a file only OpenCV decodes carries no tag Pillow can read
  return value if value in _ORIENTATIONS else 1


def read_image(path: str) -> np.ndarray:
  """[H, W] gray or [H, W, 3] RGB uint8, upright as a viewer shows it (the
  EXIF orientation applied), or UnreadableFile."""
  import cv2

  image = cv2.imread(path, cv2.IMREAD_UNCHANGED)
  if image is None:
    raise UnreadableFile(f'{path}: not an image OpenCV can decode')
  if image.dtype != np.uint8:
    image = cv2.normalize(image, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
  if image.ndim == 3 and image.shape[2] == 4:
    image = cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
  elif image.ndim == 3:
    image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
  return np.ascontiguousarray(_ORIENTATIONS[exif_orientation(path)](image))


def frames(
  path: str, every: int = 1, progress: bool = False, fps: float | None = None
) -> Iterator[tuple[int | None, float | None, np.ndarray]]:
  """(frame index, time in seconds, image) of a video's sampled frames (every
  Nth, or `fps` per second); (None, None, image) for an image file."""
  if not path.lower().endswith(VIDEO_SUFFIXES):
    yield None, None, read_image(path)
    return
  import cv2
  from tqdm import tqdm

  from densenet_flax import video

  capture = cv2.VideoCapture(path)
  if not capture.isOpened():
    raise UnreadableFile(f'{path}: not a video OpenCV can decode')
  video_fps = capture.get(cv2.CAP_PROP_FPS)
  if not video_fps > 0:
    if fps is not None:
      capture.release()
      raise UnreadableFile(
        f'{path}: the video does not say its frame rate, '
        f'so --fps cannot sample it (use --every)'
      )
    video_fps = None
  index = read = 0
  bar = tqdm(
    total=int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) or None,
    unit='frame',
    desc=os.path.basename(path),
    leave=False,
    disable=not progress,
    file=sys.stderr,
  )
  try:
    while True:
      ok = capture.grab()
      if not ok:
        break
      bar.update(1)
      if video.sampled(index, video_fps, every, fps):
        ok, frame = capture.retrieve()
        if not ok:
          raise UnreadableFile(f'{path}: frame {index} cannot be decoded')
        read += 1
        yield (
          index,
          None if video_fps is None else index / video_fps,
          cv2.cvtColor(frame, cv2.COLOR_BGR2RGB),
        )
      index += 1
  finally:
    bar.close()
    capture.release()
  if not read:
    raise UnreadableFile(f'{path}: no frames could be read')


def read_boxes(path: str) -> dict[str, list[tuple[int, ...]]]:
  """boxes.csv (header path,x,y,w,h) -> {image path: [(x, y, w, h), ...]}.

  A relative image path is taken from the current folder, else from the
  CSV's folder. A row that is not a path and four numbers is an error naming
  the row.
  """
  with open(path, newline='') as f:
    rows = list(csv.reader(f))
  if not rows or [c.strip().lower() for c in rows[0]] != [
    'path',
    'x',
    'y',
    'w',
    'h',
  ]:
    raise ValueError(f'{path}: expected the header path,x,y,w,h on line 1')
  boxes: dict[str, list[tuple[int, ...]]] = {}
  for line, row in enumerate(rows[1:], start=2):
    if not row or not ''.join(row).strip():
      continue
    try:
      image, *numbers = row
      box = tuple(int(round(float(v))) for v in numbers)
      if len(box) != 4 or box[2] <= 0 or box[3] <= 0:
        raise ValueError
    except (ValueError, OverflowError):  # OverflowError: inf
      raise ValueError(
        f'{path}: line {line}: expected an image path and x, '
        f'y, w, h with a positive width and height; got '
        f'{",".join(row)!r}'
      ) from None
    if not os.path.isabs(image) and not os.path.exists(image):
      beside = os.path.join(os.path.dirname(path), image)
      image = beside if os.path.exists(beside) else image
    if not os.path.isfile(image):
      raise FileNotFoundError(f'{path}: line {line}: {image}: no such file')
    boxes.setdefault(image, []).append(box)
  if not boxes:
    raise ValueError(f'{path}: no boxes after the header')
  return boxes


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
    if path and not path.endswith(('.jsonl', '.csv')):
      raise ValueError(f'--output {path}: expected a .jsonl or .csv file')
    self._file = open(path, 'w', newline='') if path else None
    self._csv = None
    if path and path.endswith('.csv'):
      self._csv = csv.writer(self._file)
      self._csv.writerow(
        [
          'path',
          'frame',
          'time_s',
          'track',
          'x',
          'y',
          'w',
          'h',
          'label',
          'score',
        ]
        + self.class_names
      )

  def write(self, row: dict) -> None:
    if self._csv is not None:
      box = row['box'] or ('',) * 4
      blank = lambda v: '' if v is None else v  # noqa: E731
      self._csv.writerow(
        [
          row['path'],
          blank(row['frame']),
          '' if row['time_s'] is None else f'{row["time_s"]:.3f}',
          blank(row['track']),
          *box,
          row['label'],
          f'{row["score"]:.6f}',
        ]
        + [f'{row["probabilities"][n]:.6f}' for n in self.class_names]
      )
    elif self._file is not None:
      self._file.write(json.dumps(row) + '\n')

  def close(self) -> None:
    if self._file is not None:
      self._file.close()


def annotate(image: np.ndarray, answers: list[dict], path: str) -> None:
  """Writes `image` with each answer's box and label drawn on it."""
  import cv2

  canvas = image if image.ndim == 3 else cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
  canvas = cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR)
  scale = max(canvas.shape[:2]) / 600
  for answer in answers:
    x, y, w, h = answer['box'] or (0, 0, canvas.shape[1], canvas.shape[0])
    cv2.rectangle(
      canvas,
      (x, y),
      (x + w - 1, y + h - 1),
      (0, 200, 0),
      max(1, round(2 * scale)),
    )
    cv2.putText(
      canvas,
      f'{answer["label"]} {answer["score"]:.2f}',
      (x, max(y - 4, 12)),
      cv2.FONT_HERSHEY_SIMPLEX,
      max(0.3, 0.6 * scale),
      (0, 200, 0),
      max(1, round(scale)),
    )
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  cv2.imwrite(path, canvas)


def output_stems(files: list[str]) -> dict[str, str]:
  """A distinct name stem per input file for what is written about it: the
  file's own stem, numbered where files in different folders share one."""
  stems, seen = {}, {}
  for path in files:
    stem = os.path.splitext(os.path.basename(path))[0]
    seen[stem] = seen.get(stem, 0) + 1
    stems[path] = stem if seen[stem] == 1 else f'{stem}-{seen[stem]}'
  return stems


def annotated_name(
  directory: str, path: str, frame: int | None, stem: str | None = None
) -> str:
  stem = stem or os.path.splitext(os.path.basename(path))[0]
  return os.path.join(
    directory, stem + ('' if frame is None else f'-frame{frame:06d}') + '.png'
  )


def run(
  classifier,
  paths: list[str] | None = None,
  *,
  faces: bool = False,
  every: int = 1,
  fps: float | None = None,
  boxes: str | None = None,
  output: str | None = None,
  annotate_dir: str | None = None,
  summary: str | None = None,
  timeline: str | None = None,
  tta: str | None = None,
  progress: bool = True,
) -> tuple[list, list]:
  """Predicts over `paths`; returns (rows, skipped 'path: reason' lines).

  Args:
    classifier: an inference.Classifier.
    paths: images, videos and folders of them.
    faces: classify each face found (FER models) instead of the whole image.
    every, fps: read every Nth frame of a video, or `fps` frames per second.
    boxes: a boxes.csv (path,x,y,w,h): classify these faces, no detection;
      its images are the inputs (then `paths` must be empty).
    output: write the rows to this .jsonl or .csv.
    annotate_dir: write each image (frame) with its boxes drawn here.
    summary: write each video's tracks (video.summarize) to this JSON;
      defaults to <output>.summary.json beside --output when a video is read.
    timeline: write each video's emotions over time to this PNG (with the
      video's name added when there are several).
    tta: None or 'ten_crop'.
  """
  from tqdm import tqdm

  from densenet_flax import video

  if every < 1:
    raise ValueError(f'--every {every}: expected a positive frame interval')
  if fps is not None and fps <= 0:
    raise ValueError(f'--fps {fps}: expected a positive rate')
  if fps is not None and every != 1:
    raise ValueError('--every and --fps both choose the frames: give one')
  given = None
  if boxes:
    if paths:
      raise ValueError(
        f'--boxes {boxes}: the images are the ones it names; '
        f'do not name others ({paths[0]}, ...)'
      )
    given = read_boxes(boxes)
    files, faces = list(given), True
  else:
    files = expand(paths or [])
  if timeline and not timeline.lower().endswith('.png'):
    raise ValueError(f'--timeline {timeline}: expected a .png file')
  # Every output's folder is made before any work: one that cannot be made
  # fails here, not after the last video.
  written = [path for path in (output, summary, timeline) if path]
  folders = [os.path.dirname(os.path.abspath(path)) for path in written]
  for folder in folders + ([annotate_dir] if annotate_dir else []):
    os.makedirs(folder, exist_ok=True)
  detector = None
  if faces:
    from densenet_flax.faces import FaceEmotionDetector

    detector = FaceEmotionDetector(classifier)
  writer = Writer(output, classifier.class_names)
  stems = output_stems(files)
  rows, skipped, videos = [], [], {}
  bar = tqdm(
    files, unit='file', disable=not progress or len(files) < 2, file=sys.stderr
  )
  try:
    for path in bar:
      is_video = path.lower().endswith(VIDEO_SUFFIXES)
      tracker = video.FaceTracker() if is_video and detector else None
      first, sampled = len(rows), 0
      try:
        for frame, time_s, image in frames(path, every, progress, fps):
          sampled += 1
          if given:
            try:
              answers = detector.detect(image, tta=tta, boxes=given[path])
            except ValueError as e:  # a box outside this image
              raise UnreadableFile(f'{path}: {e} (--boxes {boxes})') from None
          elif detector:
            answers = detector.detect(image, tta=tta)
          else:
            answers = classify_whole(classifier, image, tta)
          ids = (
            tracker.update([a['box'] for a in answers])
            if tracker
            else [None] * len(answers)
          )
          for answer, track in zip(answers, ids):
            row = {
              'path': path,
              'frame': frame,
              'time_s': time_s,
              'track': track,
              'box': answer['box'],
              'probabilities': answer['emotions'],
              'label': answer['label'],
              'score': answer['score'],
            }
            rows.append(row)
            writer.write(row)
          if annotate_dir:
            annotate(
              image,
              answers,
              annotated_name(annotate_dir, path, frame, stems[path]),
            )
        error = None
      except UnreadableFile as e:
        skipped.append(str(e))
        bar.write(f'skipped {e}')
        error = str(e)
      # A video that fails partway keeps the rows of the frames before the
      # failure; its summary covers those and says why it stops there.
      if is_video and (error is None or len(rows) > first):
        videos[path] = {
          'path': path,
          'frames_sampled': sampled,
          **video.summarize(rows[first:], classifier.class_names),
          **({'error': error} if error else {}),
        }
  finally:
    writer.close()
  if videos:
    _write_video_reports(
      videos, rows, classifier.class_names, output, summary, timeline, stems
    )
  return rows, skipped


def _write_video_reports(
  videos: dict, rows: list, class_names, output, summary, timeline, stems
) -> None:
  from densenet_flax import atomic
  from densenet_flax import video

  if summary is None and output:
    summary = os.path.splitext(output)[0] + '.summary.json'
  if summary:
    atomic.write_text(summary, json.dumps(list(videos.values()), indent=2))
  if timeline:
    for path in videos:
      name = (
        timeline
        if len(videos) == 1
        else (os.path.splitext(timeline)[0] + '-' + stems[path] + '.png')
      )
      video.plot_timeline(
        [r for r in rows if r['path'] == path],
        class_names,
        name,
        title=os.path.basename(path),
      )


def main(argv=None):
  from absl import app
  from absl import flags

  from densenet_flax import cli

  flags.DEFINE_string('workdir', None, 'A training workdir.')
  flags.mark_flag_as_required('workdir')
  flags.DEFINE_string('checkpoint', 'best', "'best', 'latest' or a step.")
  flags.DEFINE_bool('faces', False, 'Find faces and classify each (FER).')
  flags.DEFINE_integer('every', 1, 'Read every Nth frame of a video.')
  flags.DEFINE_float(
    'fps',
    None,
    'Read this many frames per second of a video (instead of --every).',
  )
  flags.DEFINE_string(
    'boxes',
    None,
    'A CSV (path,x,y,w,h) of face boxes to '
    'classify without detection; its images are the '
    'inputs.',
  )
  flags.DEFINE_string(
    'summary',
    None,
    "Write each video's face tracks to this JSON (default: beside --output).",
  )
  flags.DEFINE_string(
    'timeline', None, "Plot each video's emotions over time to this PNG."
  )
  flags.DEFINE_string('output', None, 'Write rows to this .jsonl or .csv.')
  flags.DEFINE_string('annotate', None, 'Write annotated images here.')
  flags.DEFINE_enum('tta', None, ['ten_crop'], 'Test-time augmentation.')
  cli.define_verbose_flag()

  def command(args):
    from densenet_flax import accelerators
    from densenet_flax.inference import Classifier

    f = flags.FLAGS
    if len(args) < 2 and not f.boxes:
      raise app.UsageError('Name at least one image, folder or video.')
    cli.set_log_levels(f.verbose)
    accelerators.log_backend()
    try:
      classifier = Classifier.from_workdir(f.workdir, f.checkpoint)
      rows, skipped = run(
        classifier,
        args[1:],
        faces=f.faces,
        every=f.every,
        fps=f.fps,
        boxes=f.boxes,
        output=f.output,
        annotate_dir=f.annotate,
        summary=f.summary,
        timeline=f.timeline,
        tta=f.tta,
      )
    except (FileNotFoundError, ValueError) as e:
      print(f'error: {e}', file=sys.stderr)
      sys.exit(2)
    if not f.output:
      for row in rows:
        print(json.dumps(row))
    print(
      f'{len(rows)} prediction(s)'
      + (f', written to {f.output}' if f.output else ''),
      file=sys.stderr,
    )
    if skipped:
      print(
        f'skipped {len(skipped)} file(s):\n  ' + '\n  '.join(skipped),
        file=sys.stderr,
      )
      sys.exit(1)

  app.run(command, argv=argv)


if __name__ == '__main__':
  main()
