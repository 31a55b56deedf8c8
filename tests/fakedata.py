"""Small, known FER2013 / FER+ files in every release format, written by tests."""

import csv
import io
import os
import tarfile

import numpy as np

from densenet_flax.data import fer_sources

USAGES = ('Training', 'PublicTest', 'PrivateTest')


def fer_rows(per_class=(4, 2, 2), seed=0):
  """[(label, pixels [48,48] uint8, usage)]: every class in every split."""
  rng = np.random.RandomState(seed)
  rows = []
  for usage, count in zip(USAGES, per_class):
    for _ in range(count):
      for label in range(7):
        rows.append(
          (label, rng.randint(0, 256, (48, 48), dtype=np.uint8), usage)
        )
  order = rng.permutation(len(rows))  # splits interleaved, as in the real file
  return [rows[i] for i in order]


def pixels_text(pixels):
  return ' '.join(str(v) for v in pixels.reshape(-1))


def fer_csv_text(rows):
  """The text of a fer2013.csv holding `rows` (label, pixels, usage)."""
  data = io.StringIO()
  writer = csv.writer(data)
  writer.writerow(['emotion', 'pixels', 'Usage'])
  for label, pixels, usage in rows:
    writer.writerow([label, pixels_text(pixels), usage])
  return data.getvalue()


def write_fer_csv(path, rows):
  with open(path, 'w', newline='') as f:
    f.write(fer_csv_text(rows))
  return path


def write_icml_csv(path, rows):
  """icml_face_data.csv: other column order, header names with a leading space."""
  with open(path, 'w', newline='') as f:
    f.write('emotion, Usage, pixels\n')
    for label, pixels, usage in rows:
      f.write(f'{label},{usage},{pixels_text(pixels)}\n')
  return path


def write_fer_tar(path, rows):
  payload = fer_csv_text(rows).encode()
  with tarfile.open(path, 'w:gz') as tar:
    info = tarfile.TarInfo('fer2013/fer2013.csv')
    info.size = len(payload)
    tar.addfile(info, io.BytesIO(payload))
  return path


def write_folder_release(root, rows, suffix='.png'):
  """train/<class>/Training_i.png, test/<class>/{Public,Private}Test_i.png."""
  from PIL import Image

  for i, (label, pixels, usage) in enumerate(rows):
    top = 'train' if usage == 'Training' else 'test'
    class_dir = os.path.join(root, top, fer_sources.EMOTIONS[label])
    os.makedirs(class_dir, exist_ok=True)
    Image.fromarray(pixels, mode='L').save(
      os.path.join(class_dir, f'{usage}_{i:05d}{suffix}')
    )
  return root


def ferplus_votes(rows, seed=1):
  """One vote row per FER row: clear majorities, ties, and non-faces."""
  rng = np.random.RandomState(seed)
  result = []
  for i in range(len(rows)):
    votes = np.zeros(10, np.int64)
    kind = i % 5
    if kind == 3:  # no majority: 4-4 tie, plus single outlier votes
      votes[rng.choice(8, 2, replace=False)] = 4
      votes[9] = 1
    elif kind == 4 and i % 10 == 9:  # not a face
      votes[9] = 10
    else:  # clear majority, with an outlier vote of 1
      top = rng.randint(8)
      votes[top] = 7
      votes[(top + 1) % 8] = 2
      votes[(top + 2) % 8] = 1
    result.append(votes)
  return result


def write_ferplus_csv(path, rows, votes):
  with open(path, 'w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(['Usage', 'Image name', *fer_sources.FERPLUS_VOTE_COLUMNS])
    for i, ((_, _, usage), v) in enumerate(zip(rows, votes)):
      name = '' if v[9] == 10 else f'fer{i:07d}.png'
      writer.writerow([usage, name, *v.tolist()])
  return path
