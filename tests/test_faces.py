"""Faces in real photographs (scikit-image ships them) -> one entry each."""

import json

import numpy as np
import pytest

cv2 = pytest.importorskip('cv2')
skimage_data = pytest.importorskip('skimage.data')

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from densenet_flax import recipe  # noqa: E402
from densenet_flax import config_keys  # noqa: E402
from densenet_flax.faces import FaceEmotionDetector  # noqa: E402
from densenet_flax.inference import Classifier  # noqa: E402
from densenet_flax.data import fer_sources  # noqa: E402
import trainutil  # noqa: E402


@pytest.fixture(scope='module')
def fer_classifier():
  """A small fer_densenet with random weights: the mechanics, not accuracy."""
  config = config_keys.base_config()
  config.dataset, config.model = 'fer2013', 'fer_densenet'
  config.model_overrides.block_sizes = (1, 1)
  config.model_overrides.growth_rate = 4
  config.image_size, config.channels = 44, 1
  config.augment.crop = 'random'
  model = recipe.build_model(config)
  variables = model.init(
    jax.random.key(0), jnp.zeros((1, 44, 44, 1)), train=False
  )
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


# ---------------------------------------------------------------------------
# Photos as phones store them: pixels as the sensor read them, plus an EXIF
# Orientation tag that every viewer applies.

from PIL import Image, ImageOps  # noqa: E402

from densenet_flax import predict  # noqa: E402
from densenet_flax import video as video_lib  # noqa: E402


def upright_photo():
  """The astronaut, cut non-square so that a transposed read shows."""
  return skimage_data.astronaut()[:, 40:440]  # 512 x 400


def store_with_orientation(upright, orientation, path):
  """Writes the pixels a camera would store for `upright` with this tag:
  the one of Pillow's transposes that its exif_transpose undoes."""
  image = Image.fromarray(upright)
  exif = Image.Exif()
  exif[0x0112] = orientation
  for transpose in [None, *Image.Transpose]:
    stored = image if transpose is None else image.transpose(transpose)
    stored.save(path, exif=exif, quality=95)
    with Image.open(path) as saved:
      shown = ImageOps.exif_transpose(saved)
      if (
        shown.size == image.size
        and np.abs(np.asarray(shown, np.int16) - upright).mean() < 3
      ):
        return
  raise AssertionError(f'no stored form for orientation {orientation}')


@pytest.mark.parametrize('orientation', range(1, 9))
def test_jpeg_is_read_upright_for_every_exif_orientation(tmp_path, orientation):
  path = str(tmp_path / f'photo{orientation}.jpg')
  store_with_orientation(upright_photo(), orientation, path)
  assert predict.exif_orientation(path) == orientation
  got = predict.read_image(path)
  with Image.open(path) as saved:  # Pillow's own reading, the reference
    want = np.asarray(ImageOps.exif_transpose(saved).convert('RGB'))
  assert got.shape == want.shape == upright_photo().shape
  # The two JPEG decoders may round differently; a wrong orientation differs
  # by tens of grey levels.
  assert np.abs(got.astype(np.int16) - want).mean() < 1.5


def test_a_sideways_photo_gives_its_face_in_upright_coordinates(
  fer_classifier, tmp_path
):
  upright = upright_photo()
  path = str(tmp_path / 'phone.jpg')
  store_with_orientation(upright, 6, path)
  with Image.open(path) as saved:
    assert saved.size == (512, 400)  # stored on its side
  detector = FaceEmotionDetector(fer_classifier)
  (want,) = detector.detect(upright)
  rows, skipped = predict.run(
    fer_classifier,
    [path],
    faces=True,
    annotate_dir=str(tmp_path / 'annotated'),
    progress=False,
  )
  assert skipped == [] and len(rows) == 1
  assert video_lib.iou(rows[0]['box'], want['box']) > 0.8
  drawn = cv2.imread(str(tmp_path / 'annotated' / 'phone.png'))
  assert drawn.shape[:2] == upright.shape[:2]
  # Read as stored, the face is on its side and the cascade misses it.
  stored = cv2.imread(
    path, cv2.IMREAD_UNCHANGED | cv2.IMREAD_IGNORE_ORIENTATION
  )
  assert detector.detect(stored[..., ::-1]) == []


# ---------------------------------------------------------------------------
# Boxes found by another detector.


def test_given_boxes_skip_detection_and_match_the_detected_face(
  fer_classifier, tmp_path
):
  image = skimage_data.astronaut()
  (found,) = FaceEmotionDetector(fer_classifier).detect(image)

  def no_detection(gray):
    raise AssertionError('detection ran although boxes were given')

  given = FaceEmotionDetector(fer_classifier, detector=no_detection)
  (answer,) = given.detect(image, boxes=[found['box']])
  assert answer == found
  # Clipped to the image: the part inside is what is classified.
  x, y, w, h = found['box']
  (clipped,) = given.detect(image, boxes=[(x - 600, y, w + 600, h)])
  assert clipped['box'] == (0, y, x + w, h)
  for bad in [(600, 0, 10, 10), (0, 0, 0, 10), ('a', 0, 1, 1)]:
    with pytest.raises(ValueError, match='box'):
      given.detect(image, boxes=[bad])

  photo = tmp_path / 'photos' / 'astronaut.png'
  photo.parent.mkdir()
  cv2.imwrite(str(photo), image[..., ::-1])
  boxes = tmp_path / 'photos' / 'boxes.csv'
  boxes.write_text(
    f'path,x,y,w,h\nastronaut.png,{x},{y},{w},{h}\nastronaut.png,0,0,100,120\n'
  )
  rows, skipped = predict.run(fer_classifier, boxes=str(boxes), progress=False)
  assert skipped == [] and [r['box'] for r in rows] == [
    found['box'],
    (0, 0, 100, 120),
  ]
  # Batched with the second box: equal to float32 rounding.
  assert rows[0]['probabilities'] == pytest.approx(found['emotions'], abs=1e-6)

  boxes.write_text('path,x,y,w,h\nastronaut.png,1,2,3\n')
  with pytest.raises(ValueError, match=r'boxes.csv: line 2: expected'):
    predict.run(fer_classifier, boxes=str(boxes), progress=False)
  boxes.write_text('path,x,y,w,h\nmissing.png,1,2,3,4\n')
  with pytest.raises(FileNotFoundError, match='line 2: missing.png'):
    predict.run(fer_classifier, boxes=str(boxes), progress=False)


# ---------------------------------------------------------------------------
# Faces over time.

FPS = 10


def write_face_video(path, seconds=2.5, blank_frame=12):
  """The astronaut's face sliding across a grey background, one frame
  (`blank_frame`) without it: MJPG, FPS frames a second."""
  face = cv2.resize(
    skimage_data.astronaut()[:300, 100:350],
    (150, 180),
    interpolation=cv2.INTER_AREA,
  )
  count = int(seconds * FPS)
  writer = cv2.VideoWriter(
    path, cv2.VideoWriter_fourcc(*'MJPG'), FPS, (480, 270)
  )
  for i in range(count):
    frame = np.full((270, 480, 3), 120, np.uint8)
    if i != blank_frame:
      x = round(i * (480 - 150) / (count - 1))
      frame[45:225, x : x + 150] = face
    writer.write(frame[..., ::-1])
  writer.release()
  return count


def test_a_face_in_a_video_is_one_track_with_its_summary_and_timeline(
  fer_classifier, tmp_path
):
  path = str(tmp_path / 'clip.avi')
  count = write_face_video(path)
  output = str(tmp_path / 'rows.jsonl')
  rows, skipped = predict.run(
    fer_classifier,
    [path],
    faces=True,
    output=output,
    timeline=str(tmp_path / 'timeline.png'),
    progress=False,
  )
  assert skipped == []
  frames = [r['frame'] for r in rows]
  assert 12 not in frames and len(frames) >= count - 3
  assert {r['track'] for r in rows} == {0}
  for row in rows:
    assert row['time_s'] == pytest.approx(row['frame'] / FPS)
  (summary,) = json.loads(open(str(tmp_path / 'rows.summary.json')).read())
  # A --summary in a folder not made yet: made, not an error after the work.
  predict.run(
    fer_classifier,
    [path],
    faces=True,
    every=8,
    summary=str(tmp_path / 'new' / 's.json'),
    progress=False,
  )
  assert (
    json.loads((tmp_path / 'new' / 's.json').read_text())[0]['path'] == path
  )
  assert summary['path'] == path and summary['frames_sampled'] == count
  (track,) = summary['tracks']
  assert track['track'] == 0 and track['frames'] == len(rows)
  assert track['first_s'] == rows[0]['time_s']
  assert track['last_s'] == rows[-1]['time_s']
  names = fer_classifier.class_names
  mean = np.mean([[r['probabilities'][n] for n in names] for r in rows], 0)
  np.testing.assert_allclose(
    [track['emotions'][n] for n in names], mean, rtol=1e-12
  )
  assert track['dominant'] == names[int(mean.argmax())]
  assert summary['dominant'] == track['dominant']
  with open(str(tmp_path / 'timeline.png'), 'rb') as f:
    assert f.read(8) == b'\x89PNG\r\n\x1a\n'

  # The same tracks from Python, and --fps samples by time.
  detector = FaceEmotionDetector(fer_classifier)
  answers = [
    a
    for frame in detector.track(
      ((f, image) for f, _, image in predict.frames(path)), fps=FPS
    )
    for a in frame
  ]
  assert [(a['frame'], a['track'], a['box']) for a in answers] == [
    (r['frame'], r['track'], r['box']) for r in rows
  ]
  sampled, _ = predict.run(
    fer_classifier, [path], faces=True, fps=4, progress=False
  )
  assert [r['frame'] for r in sampled] == [0, 3, 5, 8, 10, 13, 15, 18, 20, 23]
  assert [r['time_s'] for r in sampled] == pytest.approx(
    [0, 0.3, 0.5, 0.8, 1.0, 1.3, 1.5, 1.8, 2.0, 2.3]
  )


def test_tracks_end_where_faces_jump_or_stay_away():
  tracker = video_lib.FaceTracker(min_iou=0.3, max_missed=1)
  assert tracker.update([(0, 0, 10, 10), (50, 0, 10, 10)]) == [0, 1]
  assert tracker.update([(52, 1, 10, 10), (1, 0, 10, 10)]) == [1, 0]
  assert tracker.update([(1, 1, 10, 10)]) == [0]  # 1 missed once
  assert tracker.update([(1, 1, 10, 10), (52, 1, 10, 10)]) == [0, 1]
  assert tracker.update([(30, 30, 10, 10)]) == [2]  # a jump: a new track
  tracker.update([])
  tracker.update([])
  assert tracker.update([(30, 30, 10, 10)]) == [3]  # away too long


@pytest.mark.parametrize(
  'video_fps,fps,want',
  [
    (10, 4, [0, 3, 5, 8, 10]),
    (30, 1, [0, 30]),
    (10, 20, list(range(11))),
  ],
)
def test_fps_takes_the_first_frame_at_each_sample_time(video_fps, fps, want):
  n = want[-1] + 1
  assert [
    i for i in range(n) if video_lib.sampled(i, video_fps, 1, fps)
  ] == want


def test_an_output_of_another_kind_is_refused_before_anything_is_written(
  tmp_path,
):
  kept = tmp_path / 'results.json'
  kept.write_text('earlier results')
  with pytest.raises(ValueError, match='expected a .jsonl or .csv'):
    predict.Writer(str(kept), ['a', 'b'])
  assert kept.read_text() == 'earlier results'


def test_files_of_one_name_in_different_folders_get_their_own_outputs():
  stems = predict.output_stems(['a/clip.mp4', 'b/clip.mp4', 'c/x.png'])
  assert stems == {'a/clip.mp4': 'clip', 'b/clip.mp4': 'clip-2', 'c/x.png': 'x'}
  assert (
    predict.annotated_name('out', 'b/clip.mp4', 3, stems['b/clip.mp4'])
    == 'out/clip-2-frame000003.png'
  )


# ---------------------------------------------------------------------------
# Color runs (RAF-DB, AffectNet): RGB crops framed as their datasets frame
# faces.


def test_a_color_run_classifies_rgb_crops_framed_as_its_dataset():
  photo = skimage_data.astronaut()  # RGB
  raf = FaceEmotionDetector(trainutil.color_classifier('rafdb'))
  assert (raf.margin, raf.align, raf.face_size) == (0.15, True, 100)
  (face,) = raf.detect(photo)
  assert set(face['emotions']) == set(
    trainutil.color_classifier('rafdb').class_names
  )
  crops = raf.face_crops(photo, [face['box']])
  assert crops.shape == (1, 100, 100, 3) and crops.dtype == np.uint8
  # Color survives: the crop's channels differ where the photo's do.
  assert np.abs(crops[0, ..., 0].astype(int) - crops[0, ..., 2]).mean() > 5

  # AffectNet's faces are its boxes as they are: no margin, no rotation.
  affectnet = FaceEmotionDetector(trainutil.color_classifier('affectnet8'))
  assert (affectnet.margin, affectnet.align, affectnet.face_size) == (
    0.0,
    False,
    224,
  )
  x, y, w, h = face['box']
  (crop,) = affectnet.face_crops(photo, [face['box']])
  want = cv2.resize(
    photo[y : y + h, x : x + w], (224, 224), interpolation=cv2.INTER_AREA
  )
  np.testing.assert_array_equal(crop, want)
  # A gray photo still goes to a color run, as three equal channels.
  gray = cv2.cvtColor(photo, cv2.COLOR_RGB2GRAY)
  (gray_crop,) = affectnet.face_crops(gray, [face['box']])
  assert gray_crop.shape == (224, 224, 3)
  np.testing.assert_array_equal(gray_crop[..., 0], gray_crop[..., 2])
