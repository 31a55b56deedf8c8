"""Inference speed: Classifier.predict against PyTorch, Keras and ONNX
Runtime, interleaved.

  python -m benchmarks.inference [--cases fer_densenet@48x1 densenet121@224x3]
      [--batches 1 64] [--rounds 5] [--json out.json]
      [--peers ours torch keras-tf onnxruntime] [--no-faces]

For each model and batch, the same architecture with random weights:
  - ours: `Classifier.predict_preprocessed` (normalised numpy in, numpy
    probabilities out: host-device copies included, jitted at the batch);
  - ours-e2e: `Classifier.predict` on 0-255 uint8 images at the stored size
    (preprocessing in JAX/numpy included);
  - torch: torchvision's DenseNet code (benchmarks/peers) in eval mode under
    torch.inference_mode, softmax, numpy out;
  - keras-tf: the keras.applications (or same-recipe) model's
    `predict_on_batch` (Keras's lowest-overhead predict), softmax;
  - onnxruntime: our model and weights exported with `export.py --format
    onnx` (0-255 float32 pixels in, normalised inside, probabilities out),
    run by an onnxruntime InferenceSession on the CPU.
All are set up first, then timed in turns, round after round, so a noisy
machine slows each alike. Also: faces/second of the whole
FaceEmotionDetector.detect path (Haar detection, alignment, crop, fer_densenet)
on scikit-image's astronaut photograph. Peers not installed are skipped, with
a note under the table.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import os
import platform
import statistics
import tempfile
import time

import numpy as np

CASES = ('fer_densenet@48x1', 'densenet121@224x3')
BATCHES = (1, 64)
NUM_CLASSES = {'imagenet': 1000, 'cifar': 10, 'fer': 7}


def parse(case: str) -> tuple[str, int, int]:
  model, shape = case.split('@')
  size, channels = shape.split('x')
  return model, int(size), int(channels)


@functools.cache
def random_model(model_name, size, channels, num_classes):
  """(model, variables): one draw, shared by ours and onnxruntime."""
  import jax
  import jax.numpy as jnp

  from densenet_flax import models

  model = models.create_model(model_name, num_classes=num_classes)
  variables = model.init(
    jax.random.key(0), jnp.zeros((1, size, size, channels)), train=False
  )
  return model, variables


def classifier_for(model_name, size, channels, batch, num_classes):
  from densenet_flax import config_keys
  from densenet_flax.inference import Classifier

  model, variables = random_model(model_name, size, channels, num_classes)
  config = config_keys.base_config()
  config.model = model_name
  config.dataset = 'fer2013' if channels == 1 else 'imagenet2012'
  config.image_size, config.channels = size, channels
  config.augment.crop = 'none' if channels == 1 else 'resized'
  stats = [0.5] * channels
  return Classifier(
    model, variables, config, stats, stats, batch_sizes=(batch,)
  )


def ours(model_name, size, channels, batch, num_classes):
  classifier = classifier_for(model_name, size, channels, batch, num_classes)
  inputs = (
    np.random.RandomState(0)
    .normal(size=(batch, size, size, channels))
    .astype(np.float32)
  )
  stored = classifier.stored_size or size
  pixels = (
    np.random.RandomState(1)
    .randint(0, 256, (batch, stored, stored, channels))
    .astype(np.uint8)
  )
  return {
    'ours': lambda: classifier.predict_preprocessed(inputs),
    'ours-e2e': lambda: classifier.predict(pixels),
  }


def torch_peer(model_name, size, channels, batch, num_classes):
  import torch

  from benchmarks.peers import torch_densenet
  from densenet_flax import models

  torch.manual_seed(0)
  model = torch_densenet.from_fields(
    models.PRESETS[model_name], num_classes, channels
  ).eval()
  x = torch.randn(batch, channels, size, size)

  def run():
    with torch.inference_mode():
      return torch.softmax(model(x), -1).numpy()

  return {'torch': run}


def keras_peer(model_name, size, channels, batch, num_classes):
  os.environ.setdefault('KERAS_BACKEND', 'tensorflow')
  import keras

  from benchmarks.peers import keras_densenet
  from densenet_flax import models

  model = keras_densenet.from_fields(
    models.PRESETS[model_name], num_classes, (size, size, channels)
  )
  x = (
    np.random.RandomState(0)
    .normal(size=(batch, size, size, channels))
    .astype(np.float32)
  )

  def run():
    return keras.ops.convert_to_numpy(
      keras.ops.softmax(model.predict_on_batch(x))
    )

  return {'keras-tf': run}


def onnx_peer(model_name, size, channels, batch, num_classes):
  import onnxruntime

  from densenet_flax import export

  classifier = classifier_for(model_name, size, channels, batch, num_classes)
  # The session holds the model once created: the file can go.
  with tempfile.TemporaryDirectory(prefix='densenet_flax_onnx_') as tmp:
    path = export.export(classifier, os.path.join(tmp, 'model.onnx'), 'onnx')
    session = onnxruntime.InferenceSession(
      path, providers=['CPUExecutionProvider']
    )
  pixels = (
    np.random.RandomState(1)
    .randint(0, 256, (batch, size, size, channels))
    .astype(np.float32)
  )
  return {'onnxruntime': lambda: session.run(None, {'pixels': pixels})[0]}


PEERS = {
  'ours': (ours, ('jax', 'flax')),
  'torch': (torch_peer, ('torch',)),
  'keras-tf': (keras_peer, ('keras', 'tensorflow')),
  'onnxruntime': (onnx_peer, ('onnx', 'onnxruntime')),
}
COLUMNS = ('ours', 'ours-e2e', 'torch', 'keras-tf', 'onnxruntime')


def time_case(
  case: str, batch: int, rounds: int, calls: int, peers=tuple(PEERS)
) -> dict:
  model_name, size, channels = parse(case)
  from densenet_flax import models

  num_classes = NUM_CLASSES[models.PRESETS[model_name]['stem']]
  runners, results = {}, {}
  for name in peers:
    make, needs = PEERS[name]
    missing = [m for m in needs if importlib.util.find_spec(m) is None]
    if missing:
      results[name] = {'skipped': f'{", ".join(missing)} not installed'}
      continue
    for variant, run in make(
      model_name, size, channels, batch, num_classes
    ).items():
      start = time.perf_counter()
      run()  # compile / first call
      results[variant] = {
        'first_call_s': time.perf_counter() - start,
        'times': [],
      }
      runners[variant] = run
  names = list(runners)
  for r in range(rounds):
    for name in names[r % len(names) :] + names[: r % len(names)]:
      for _ in range(calls):
        start = time.perf_counter()
        runners[name]()
        results[name]['times'].append(time.perf_counter() - start)
  for result in results.values():
    if result.get('times'):
      median = statistics.median(result['times'])
      result.update(median_s=median, images_per_s=batch / median)
  return {'case': case, 'batch': batch, 'results': results}


def faces_per_second(rounds: int) -> dict:
  import jax
  import jax.numpy as jnp
  from skimage import data as skimage_data

  from densenet_flax import config_keys
  from densenet_flax import models
  from densenet_flax.faces import FaceEmotionDetector
  from densenet_flax.inference import Classifier

  config = config_keys.base_config()
  config.model, config.dataset = 'fer_densenet', 'fer2013'
  config.image_size, config.channels, config.augment.crop = 44, 1, 'random'
  model = models.create_model('fer_densenet', num_classes=7)
  variables = model.init(
    jax.random.key(0), jnp.zeros((1, 44, 44, 1)), train=False
  )
  detector = FaceEmotionDetector(
    Classifier(model, variables, config, [0.5], [0.25])
  )
  photo = skimage_data.astronaut()
  faces = len(detector.detect(photo))  # compile
  times = []
  for _ in range(rounds * 4):
    start = time.perf_counter()
    detector.detect(photo)
    times.append(time.perf_counter() - start)
  median = statistics.median(times)
  return {
    'photo': 'skimage.data.astronaut() 512x512',
    'faces': faces,
    'median_s': median,
    'faces_per_s': faces / median,
  }


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--cases', nargs='*', default=CASES)
  parser.add_argument('--batches', type=int, nargs='*', default=BATCHES)
  parser.add_argument('--rounds', type=int, default=5)
  parser.add_argument('--calls', type=int, default=3)
  parser.add_argument('--json', default=None)
  parser.add_argument(
    '--peers', nargs='*', default=list(PEERS), choices=list(PEERS)
  )
  parser.add_argument(
    '--faces',
    action=argparse.BooleanOptionalAction,
    default=True,
    help='Time the face path too.',
  )
  args = parser.parse_args(argv)
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

  report = {
    'machine': f'{platform.machine()}, {os.cpu_count()} cores',
    'cases': [],
  }
  peers = COLUMNS[2:]
  print(
    '| model, batch | '
    + ' | '.join([*COLUMNS, *(f'ours / {k}' for k in peers)])
    + ' |'
  )
  print('|---' * (1 + len(COLUMNS) + len(peers)) + '|')
  skipped = {}
  for case in args.cases:
    for batch in args.batches:
      row = time_case(case, batch, args.rounds, args.calls, args.peers)
      report['cases'].append(row)
      rate = {k: v.get('images_per_s') for k, v in row['results'].items()}
      skipped.update(
        (k, v['skipped']) for k, v in row['results'].items() if 'skipped' in v
      )
      cells = [f'{rate[k]:,.1f}' if rate.get(k) else '-' for k in COLUMNS]
      cells += [
        f'{rate["ours"] / rate[k]:.2f}'
        if rate.get(k) and rate.get('ours')
        else '-'
        for k in peers
      ]
      print(f'| {case}, {batch} | ' + ' | '.join(cells) + ' |', flush=True)
  for name, why in skipped.items():
    print(f'{name}: skipped ({why})')
  if (
    args.faces
    and importlib.util.find_spec('cv2')
    and importlib.util.find_spec('skimage')
  ):
    report['faces'] = faces_per_second(args.rounds)
    f = report['faces']
    print(
      f'Faces: {f["faces_per_s"]:.1f} faces/s ({f["faces"]} face in '
      f'{f["photo"]}, {f["median_s"] * 1000:.1f} ms per photo)'
    )
  if args.json:
    with open(args.json, 'w') as out:
      json.dump(report, out, indent=2)


if __name__ == '__main__':
  main()
