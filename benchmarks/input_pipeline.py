"""Images/second of the FER2013 training input pipeline on this machine.

Writes a synthetic fer2013.csv (random faces; real loading code), builds it
with the TFDS builder in a temporary directory, then times the training
batches of configs/fer2013.py (random 44px crops, flip, rotation,
normalisation, device layout) and the ten-crop eval batches.

  python -m benchmarks.input_pipeline [--rows 8000] [--batches 100] [--json out.json]
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


def real_images(batch) -> int:
  """Examples in a batch, without evaluation's padding (mask False)."""
  return int(batch['mask'].sum()) if 'mask' in batch else batch['label'].size


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
  parser.add_argument('--rows', type=int, default=8000)
  parser.add_argument('--batches', type=int, default=100)
  parser.add_argument('--json', default=None)
  args = parser.parse_args(argv)

  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  from densenet_flax import config as config_lib
  from densenet_flax.data import pipeline
  from densenet_flax.datasets import prepare

  root = tempfile.mkdtemp(prefix='fer_bench_')
  try:
    result = _run(args, root, prepare, pipeline, config_lib)
  finally:
    shutil.rmtree(root, ignore_errors=True)
  print(json.dumps(result, indent=2))
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(result, f, indent=2)


def _run(args, root, prepare, pipeline, config_lib):
  manual = os.path.join(root, 'manual')
  os.makedirs(manual)
  start = time.perf_counter()
  write_fake_fer(os.path.join(manual, 'fer2013.csv'), args.rows)
  written = time.perf_counter() - start
  start = time.perf_counter()
  prepare.load_builder(
    'fer2013', data_dir=os.path.join(root, 'data'), manual_dir=manual
  )
  built = time.perf_counter() - start

  here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  config = config_lib.load_config_file(
    os.path.join(here, 'configs', 'fer2013.py')
  )
  config.data_dir = os.path.join(root, 'data')
  config.manual_dir = manual
  data = pipeline.InputPipeline(config, num_devices=1)
  train = time_batches(data.train_batches(), args.batches)

  def eval_forever():
    while True:
      yield from data.eval_batches('public_test', tta='ten_crop')

  # Real examples only: the padding of each pass's last batch is not work.
  ten_crop = time_batches(eval_forever(), max(1, args.batches // 10))
  result = {
    'machine': f'{platform.machine()}, {os.cpu_count()} cores',
    'rows': args.rows,
    'csv_write_s': round(written, 1),
    'tfds_build_s': round(built, 1),
    'train_images_per_s': {
      'median': round(train[0]),
      'min': round(train[1]),
      'max': round(train[2]),
    },
    'ten_crop_eval_images_per_s': {
      'median': round(ten_crop[0]),
      'min': round(ten_crop[1]),
      'max': round(ten_crop[2]),
    },
    'batch_size': config.batch_size,
  }
  return result


if __name__ == '__main__':
  main()
