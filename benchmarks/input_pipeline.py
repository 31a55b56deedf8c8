"""Images/second of a training input pipeline on this machine.

  python -m benchmarks.input_pipeline [--recipe fer2013|rafdb] [--rows 8000]
      [--batches 100] [--cores N] [--json out.json]

fer2013: writes a synthetic fer2013.csv (random faces; real loading code),
builds it with the TFDS builder in a temporary directory, then times the
training batches of configs/fer2013.py (random 44px crops, flip, rotation,
normalisation, device layout) and the ten-crop eval batches.

rafdb: writes a synthetic RAF-DB basic release (--rows aligned 100x100 JPEG
faces of smooth random texture, as compressible as photographs), builds it
(array_record, read by index), then times the training batches of
configs/rafdb.py at 224 px: JPEG decoding, the resize to 224, the padded crop
and rotation for 20% of the images, flips, normalisation, random erasing and
the device layout, batch 256; and the eval batches.

--cores N pins this process to N cores (sched_setaffinity, before TensorFlow
starts its thread pools), so a rate with --cores 1 is the rate per core.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import statistics
import tempfile
import time

import numpy as np


def write_fake_fer(path: str, rows: int, seed: int = 0) -> None:
  rng = np.random.RandomState(seed)
  usages = ['Training'] * int(rows * 0.8) + ['PublicTest'] * int(rows * 0.1)
  usages += ['PrivateTest'] * (rows - len(usages))
  with open(path, 'w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(['emotion', 'pixels', 'Usage'])
    for usage in usages:
      pixels = rng.randint(0, 256, 2304)
      writer.writerow([rng.randint(7), ' '.join(map(str, pixels)), usage])


def write_fake_rafdb(root: str, rows: int, seed: int = 0) -> None:
  """RAF-DB's basic layout: EmoLabel/list_patition_label.txt and
  Image/aligned/*_aligned.jpg, 90% train and 10% test, 7 labels."""
  from PIL import Image

  rng = np.random.default_rng(seed)
  os.makedirs(os.path.join(root, 'Image', 'aligned'))
  os.makedirs(os.path.join(root, 'EmoLabel'))
  lines = []
  train = int(rows * 0.9)
  for i in range(rows):
    split, number = ('train', i + 1) if i < train else ('test', i - train + 1)
    name = (
      f'{split}_{number:05d}.jpg'
      if split == 'train'
      else (f'{split}_{number:04d}.jpg')
    )
    # Smooth texture: 13x13 noise upsampled, as much detail as a face has.
    coarse = rng.integers(0, 256, (13, 13, 3), dtype=np.uint8)
    image = Image.fromarray(coarse).resize((100, 100), Image.BICUBIC)
    image.save(
      os.path.join(root, 'Image', 'aligned', name[:-4] + '_aligned.jpg'),
      quality=90,
    )
    lines.append(f'{name} {rng.integers(1, 8)}')
  with open(
    os.path.join(root, 'EmoLabel', 'list_patition_label.txt'), 'w'
  ) as f:
    f.write('\n'.join(lines) + '\n')


def real_images(batch) -> int:
  """Examples in a batch, without evaluation's padding (mask False)."""
  return int(batch['mask'].sum()) if 'mask' in batch else batch['label'].size


def rates(timed) -> dict:
  """time_batches' (median, min, max) as rounded images/s."""
  return dict(zip(('median', 'min', 'max'), (round(r) for r in timed)))


def time_batches(iterator, batches: int, repeats: int = 3):
  """(median, min, max) real images per second over `repeats` timings."""
  next(iterator)  # warm-up: pipeline construction and the first epoch
  rates = []
  for _ in range(repeats):
    start = time.perf_counter()
    images = sum(real_images(next(iterator)) for _ in range(batches))
    rates.append(images / (time.perf_counter() - start))
  return statistics.median(rates), min(rates), max(rates)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument(
    '--recipe', choices=('fer2013', 'rafdb'), default='fer2013'
  )
  parser.add_argument('--rows', type=int, default=8000)
  parser.add_argument('--batches', type=int, default=100)
  parser.add_argument('--cores', type=int, default=0, help='0 = all')
  parser.add_argument('--json', default=None)
  args = parser.parse_args(argv)
  if args.cores:
    os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[: args.cores]))

  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  root = tempfile.mkdtemp(prefix=f'{args.recipe}_bench_')
  try:
    data, written, built = _built_pipeline(args, root)
    run = _run if args.recipe == 'fer2013' else _run_rafdb
    result = run(args, data, written, built)
  finally:
    shutil.rmtree(root, ignore_errors=True)
  print(json.dumps(result, indent=2))
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(result, f, indent=2)


def _built_pipeline(args, root):
  """The recipe's training InputPipeline (configs/<recipe>.py, one device)
  on synthetic data written and built under `root`, and the seconds the
  writing and the build took."""
  from densenet_flax import config_keys
  from densenet_flax.data import pipeline
  from densenet_flax.datasets import prepare

  manual = os.path.join(root, 'manual')
  start = time.perf_counter()
  if args.recipe == 'fer2013':
    os.makedirs(manual)
    write_fake_fer(os.path.join(manual, 'fer2013.csv'), args.rows)
  else:
    write_fake_rafdb(manual, args.rows)
  written = time.perf_counter() - start
  start = time.perf_counter()
  prepare.load_builder(
    args.recipe, data_dir=os.path.join(root, 'data'), manual_dir=manual
  )
  built = time.perf_counter() - start
  here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  config = config_keys.load_config_file(
    os.path.join(here, 'configs', f'{args.recipe}.py')
  )
  config.data_dir = os.path.join(root, 'data')
  config.manual_dir = manual
  return pipeline.InputPipeline(config, num_devices=1), written, built


def _run(args, data, written, built):
  train = time_batches(data.train_batches(), args.batches)

  def eval_forever():
    while True:
      yield from data.eval_batches('public_test', tta='ten_crop')

  # Real examples only: the padding of each pass's last batch is not work.
  ten_crop = time_batches(eval_forever(), max(1, args.batches // 10))
  return {
    'machine': f'{platform.machine()}, {os.cpu_count()} cores',
    'rows': args.rows,
    'csv_write_s': round(written, 1),
    'tfds_build_s': round(built, 1),
    'train_images_per_s': rates(train),
    'ten_crop_eval_images_per_s': rates(ten_crop),
    'batch_size': data.config.batch_size,
  }


def _run_rafdb(args, data, written, built):
  batches = max(1, args.batches * 128 // data.config.batch_size)
  train = time_batches(data.train_batches(), batches)

  def eval_forever():
    while True:
      yield from data.eval_batches('test')

  evaluation = time_batches(eval_forever(), max(1, batches // 4))
  return {
    'machine': f'{platform.machine()}, {os.cpu_count()} cores',
    'cores_used': len(os.sched_getaffinity(0)),
    'recipe': 'rafdb',
    'rows': args.rows,
    'write_s': round(written, 1),
    'tfds_build_s': round(built, 1),
    'train_images_per_s': rates(train),
    'eval_images_per_s': rates(evaluation),
    'batch_size': data.config.batch_size,
    'image_size': data.config.image_size,
  }


if __name__ == '__main__':
  main()
