"""Using a trained run: Classifier, faces, predict.py and export."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip('tensorflow')
cv2 = pytest.importorskip('cv2')

from densenet_flax import evaluation  # noqa: E402
from densenet_flax import run_directory  # noqa: E402
from densenet_flax.inference import Classifier  # noqa: E402

import trainutil  # noqa: E402


def stored_test_split(digits_dir):
  """The stored test split (uint8 [359, 8, 8, 1]) and its labels."""
  import tensorflow_datasets as tfds
  from densenet_flax.datasets import prepare

  builder = prepare.load_builder('digits', data_dir=digits_dir)
  data = tfds.as_numpy(
    builder.as_dataset(split='test', batch_size=-1, shuffle_files=False)
  )
  return data['image'], data['label']


@pytest.fixture(scope='module')
def classifier(digits_run):
  return Classifier.from_workdir(digits_run, 'latest')


def test_predict_gives_the_accuracy_evaluate_reports(
  classifier, digits_run, digits_dir
):
  images, labels = stored_test_split(digits_dir)
  probabilities = classifier.predict(images)
  assert probabilities.shape == (359, 10)
  np.testing.assert_allclose(probabilities.sum(1), 1, rtol=1e-5)
  predictions = probabilities.argmax(1)
  report = evaluation.evaluate(digits_run, 'latest', split='test')
  assert report['step'] == classifier.step
  assert np.mean(predictions == labels) == report['accuracy']
  confusion = np.zeros((10, 10), int)
  np.add.at(confusion, (labels, predictions), 1)
  assert confusion.tolist() == report['confusion_matrix']


def test_batches_of_any_size_compile_once_per_fixed_size(
  classifier, digits_dir
):
  images, _ = stored_test_split(digits_dir)
  whole = classifier.predict(images[:70])
  for n in (1, 2, 7, 9, 65):  # padded to 1, 8, 64; 65 = 64 + 1
    np.testing.assert_allclose(
      classifier.predict(images[:n]), whole[:n], atol=1e-6
    )
  assert classifier._apply._cache_size() <= len(classifier.batch_sizes)
  assert classifier.predict(images[:0]).shape == (0, 10)


def test_preprocessing_is_the_evaluation_pipelines(digits_run):
  """The JAX preprocessing against data/augment.py's tf ops, crop by crop."""
  import tensorflow as tf
  from densenet_flax.data import augment

  rng = np.random.RandomState(0)
  base = run_directory.load_config(digits_run)
  cases = [
    ('fer2013', 44, 'random', 0, 48, 48, 1),  # FER: centre 44 of 48
    ('fer2013', 40, 'random', 0, 100, 80, 1),  # a photo, any size
    ('fer2013', 48, 'none', 64, 48, 48, 3),  # resize, gray -> RGB
    ('imagenet2012', 32, 'resized', 0, 50, 70, 3),
    ('digits', 16, 'pad', 16, 8, 8, 1),
  ]
  for dataset, size, crop, resize, height, width, channels in cases:
    config = base.copy_and_resolve_references()
    config.dataset, config.image_size, config.channels = dataset, size, channels
    config.augment.crop, config.augment.resize = crop, resize
    stored = 3 if dataset == 'imagenet2012' else 1
    mean, std = [0.4] * stored, [0.25] * stored
    clf = Classifier(None, None, config, mean, std)
    images = rng.randint(0, 256, (2, height, width, stored)).astype(np.uint8)
    tta_modes = (None, 'ten_crop') if crop in ('random', 'resized') else (None,)
    for tta in tta_modes:
      want = []
      for image in images:
        if (
          dataset != 'imagenet2012'
          and image.shape[:2] != (clf.stored_size,) * 2
        ):
          image = tf.image.resize(
            tf.cast(image, tf.float32), [clf.stored_size] * 2
          ).numpy()
        fn = augment.ten_crop if tta else augment.eval_image
        view = fn(tf.constant(image), image_size=size, crop=crop, resize=resize)
        want.append(augment.normalize(view, mean, std, channels).numpy())
      np.testing.assert_allclose(
        clf.preprocess(images, tta),
        np.stack(want),
        atol=2e-4,
        err_msg=f'{dataset} {crop} {tta}',
      )


def test_bad_input_is_named(classifier, digits_run, tmp_path):
  with pytest.raises(
    ValueError,
    match='images have 4 channels; digits '
    r'models take 1 \(or 3, converted to grayscale\)',
  ):
    classifier.predict(np.zeros((2, 8, 8, 4), np.uint8))
  with pytest.raises(ValueError, match=r'\[N, H, W\] or \[N, H, W, C\]'):
    classifier.predict(np.zeros((8, 8), np.uint8))
  (tmp_path / 'checkpoints').mkdir()
  (tmp_path / 'config.json').write_text(
    run_directory.load_config(digits_run).to_json()
  )
  with pytest.raises(FileNotFoundError, match='No checkpoints in'):
    Classifier.from_workdir(str(tmp_path), 'latest')
  with pytest.raises(FileNotFoundError, match='config.json not found'):
    Classifier.from_workdir(str(tmp_path / 'nothing'))


def test_no_tensorflow_on_the_inference_path(digits_run):
  code = (
    'import sys, numpy as np\n'
    'from densenet_flax.inference import Classifier\n'
    f'clf = Classifier.from_workdir({digits_run!r}, "latest")\n'
    'p = clf.predict(np.zeros((3, 8, 8), np.uint8))\n'
    'assert p.shape == (3, 10)\n'
    'loaded = sorted(m for m in sys.modules if m.split(".")[0] in '
    '("tensorflow", "keras", "tensorflow_datasets"))\n'
    'print(loaded)\n'
  )
  out = subprocess.run(
    [sys.executable, '-c', code],
    capture_output=True,
    text=True,
    timeout=300,
    env=dict(os.environ, JAX_PLATFORMS='cpu'),
  )
  assert out.returncode == 0, out.stderr[-3000:]
  assert out.stdout.strip() == '[]', out.stdout


def run_predict(digits_run, *args):
  return subprocess.run(
    [
      sys.executable,
      os.path.join(trainutil.REPO, 'predict.py'),
      '--workdir',
      digits_run,
      '--checkpoint',
      'latest',
      *map(str, args),
    ],
    capture_output=True,
    text=True,
    timeout=300,
    env=dict(os.environ, JAX_PLATFORMS='cpu'),
  )


def test_predict_command_on_pngs_a_video_and_a_bad_file(
  classifier, digits_run, digits_dir, tmp_path
):
  images, _ = stored_test_split(digits_dir)
  folder = tmp_path / 'in' / 'nested'
  folder.mkdir(parents=True)
  paths = []
  for i in range(5):
    paths.append(str(folder / f'digit{i}.png'))
    cv2.imwrite(paths[-1], images[i][..., 0])
  (tmp_path / 'in' / 'notes.txt').write_text('ignored: not a media file')
  broken = tmp_path / 'broken.png'
  broken.write_text('not a png')
  video = str(tmp_path / 'clip.avi')
  writer = cv2.VideoWriter(
    video, cv2.VideoWriter_fourcc(*'MJPG'), 5, (32, 32), isColor=True
  )
  for i in range(6):
    frame = cv2.resize(
      images[i][..., 0], (32, 32), interpolation=cv2.INTER_NEAREST
    )
    writer.write(cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR))
  writer.release()

  out = run_predict(
    digits_run,
    tmp_path / 'in',
    broken,
    video,
    '--every',
    2,
    '--output',
    tmp_path / 'rows' / 'rows.jsonl',  # every output's folder is made
    '--annotate',
    tmp_path / 'images' / 'annotated',
  )
  assert out.returncode == 1, out.stderr[-3000:]  # the broken file
  assert f'{broken}: not an image' in out.stderr
  assert 'skipped 1 file(s)' in out.stderr
  rows = [
    json.loads(line)
    for line in (tmp_path / 'rows' / 'rows.jsonl').read_text().splitlines()
  ]
  assert [r['path'] for r in rows[:5]] == paths
  want = classifier.predict(images[:5])
  for row, p in zip(rows[:5], want):
    got = [row['probabilities'][name] for name in classifier.class_names]
    np.testing.assert_allclose(got, p, atol=1e-6)
    assert row['label'] == classifier.class_names[int(p.argmax())]
    assert row['frame'] is None and row['box'] is None
  assert [(r['path'], r['frame']) for r in rows[5:]] == [
    (video, 0),
    (video, 2),
    (video, 4),
  ]
  assert len(os.listdir(tmp_path / 'images' / 'annotated')) == 5 + 3

  # --fps samples by time (2.5 a second of a 5 fps video: every other frame);
  # the summary and the timeline of the video are written where asked.
  out = run_predict(
    digits_run,
    video,
    '--fps',
    2.5,
    '--summary',
    tmp_path / 'reports' / 'summary.json',
    '--timeline',
    tmp_path / 'plots' / 'timeline.png',
  )
  assert out.returncode == 0, out.stderr[-3000:]
  timed = [
    json.loads(line) for line in out.stdout.splitlines() if line.startswith('{')
  ]
  assert [(r['frame'], r['time_s'], r['track']) for r in timed] == [
    (0, 0.0, None),
    (2, 0.4, None),
    (4, 0.8, None),
  ]
  (summary,) = json.loads((tmp_path / 'reports' / 'summary.json').read_text())
  assert summary['frames_sampled'] == 3 and summary['tracks'][0]['frames'] == 3
  assert (tmp_path / 'plots' / 'timeline.png').read_bytes()[:4] == b'\x89PNG'

  csv_path = tmp_path / 'csv' / 'rows.csv'
  out = run_predict(digits_run, paths[0], '--output', csv_path)
  assert out.returncode == 0, out.stderr[-3000:]
  lines = csv_path.read_text().splitlines()
  assert lines[0].startswith(
    'path,frame,time_s,track,x,y,w,h,label,score,0,1,2'
  )
  assert len(lines) == 2

  empty = tmp_path / 'empty'
  empty.mkdir()
  out = run_predict(digits_run, empty)
  assert out.returncode == 2 and f'{empty}: no images or videos' in out.stderr


def test_predict_on_one_image_prints_its_answer_and_little_else(
  digits_run, digits_dir, tmp_path
):
  images, _ = stored_test_split(digits_dir)
  path = str(tmp_path / 'digit.png')
  cv2.imwrite(path, images[0][..., 0])
  out = run_predict(digits_run, path)
  assert out.returncode == 0, out.stderr[-3000:]
  (row,) = out.stdout.splitlines()
  assert json.loads(row)['path'] == path
  # Ours: the backend, the checkpoint restored, the classifier, the count.
  assert len(out.stderr.splitlines()) <= 5, out.stderr
  verbose = run_predict(digits_run, path, '--verbose')
  assert verbose.returncode == 0, verbose.stderr[-3000:]
  assert len(verbose.stderr.splitlines()) > len(out.stderr.splitlines())


def test_export_round_trip(classifier, digits_dir, tmp_path):
  import tensorflow as tf
  from densenet_flax import export

  images, _ = stored_test_split(digits_dir)
  images = images[:6]
  want = classifier.predict(images)
  pixels = classifier.crops(images).astype(np.float32)
  # Every output's folder is made.
  saved = export.export(classifier, str(tmp_path / 'models' / 'saved_model'))
  loaded = tf.saved_model.load(saved)
  got = loaded.signatures['serving_default'](pixels=tf.constant(pixels))
  np.testing.assert_allclose(list(got.values())[0].numpy(), want, atol=1e-4)
  labels = tmp_path / 'models' / 'saved_model' / 'labels.txt'
  assert labels.read_text().split() == [str(i) for i in range(10)]

  lite = export.export(
    classifier, str(tmp_path / 'lite' / 'model.tflite'), 'tflite'
  )
  interpreter = tf.lite.Interpreter(model_path=lite)
  interpreter.allocate_tensors()
  entry = interpreter.get_input_details()[0]['index']
  result = interpreter.get_output_details()[0]['index']
  for pixel, p in zip(pixels, want):
    interpreter.set_tensor(entry, pixel[None])
    interpreter.invoke()
    np.testing.assert_allclose(interpreter.get_tensor(result)[0], p, atol=1e-4)


@pytest.mark.slow
def test_export_of_a_color_run_gives_its_predictions(tmp_path):
  """A RAF-DB-shaped run (RGB, DenseNet-121 layout, ImageNet mean/std):
  SavedModel, TFLite and ONNX answer as Classifier.predict does."""
  import tensorflow as tf
  from densenet_flax import export

  classifier = trainutil.color_classifier('rafdb', size=64)
  photos = np.random.default_rng(0).integers(0, 256, (3, 100, 100, 3))
  want = classifier.predict(photos)
  pixels = classifier.crops(photos).astype(np.float32)
  assert pixels.shape == (3, 64, 64, 3)

  saved = export.export(classifier, str(tmp_path / 'saved_model'))
  got = tf.saved_model.load(saved).signatures['serving_default'](
    pixels=tf.constant(pixels)
  )
  np.testing.assert_allclose(list(got.values())[0].numpy(), want, atol=1e-4)
  labels = (tmp_path / 'saved_model' / 'labels.txt').read_text().split()
  assert labels == list(classifier.class_names) and len(labels) == 7

  lite = export.export(classifier, str(tmp_path / 'model.tflite'), 'tflite')
  interpreter = tf.lite.Interpreter(model_path=lite)
  interpreter.allocate_tensors()
  entry = interpreter.get_input_details()[0]['index']
  result = interpreter.get_output_details()[0]['index']
  interpreter.set_tensor(entry, pixels[:1])
  interpreter.invoke()
  np.testing.assert_allclose(
    interpreter.get_tensor(result)[0], want[0], atol=1e-4
  )

  ort = pytest.importorskip('onnxruntime')
  path = export.export(classifier, str(tmp_path / 'model.onnx'), 'onnx')
  session = ort.InferenceSession(path, providers=['CPUExecutionProvider'])
  (onnx_out,) = session.run(None, {'pixels': pixels})
  np.testing.assert_allclose(onnx_out, want, atol=1e-4)
