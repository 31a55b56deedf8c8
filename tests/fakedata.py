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


# --- RAF-DB, AffectNet and class folders -------------------------------------
# Each image is one solid color (JPEG keeps it within a few levels), unique
# per example, so a test can tell which file an example was read from.


def color_of(index):
  """A distinct RGB color for example `index` (channels 40-219)."""
  return tuple(40 + ((index + 1) * step) % 180 for step in (37, 71, 113))


def write_image(path, color, size=(100, 100), gray=False):
  """A solid-color image (size = (width, height)); the suffix picks the format."""
  from PIL import Image

  os.makedirs(os.path.dirname(path), exist_ok=True)
  if gray:
    image = Image.new('L', size, color[0])
  else:
    image = Image.new('RGB', size, tuple(color))
  image.save(path)
  return path


def write_rafdb(root, per_split=(('train', 2), ('test', 1))):
  """RAF-DB's basic release: EmoLabel/list_patition_label.txt + aligned JPEGs.

  `per_split` images of each label 1-7 per split. The first train image is
  a 60x60 grayscale JPEG (the reader resizes it and makes it RGB). Returns
  one record per image: split, key, file, label (0-6), color, gray.
  """
  records, lines = [], []
  for split, count in per_split:
    number = 0
    for _ in range(count):
      for label in range(1, 8):
        number += 1
        digits = 5 if split == 'train' else 4
        name = f'{split}_{number:0{digits}d}.jpg'
        gray = split == 'train' and number == 1
        color = color_of(len(records))
        if gray:
          color = (color[0],) * 3
        file = os.path.join(
          'Image', 'aligned', name.replace('.jpg', '_aligned.jpg')
        )
        write_image(
          os.path.join(root, file),
          color,
          size=(60, 60) if gray else (100, 100),
          gray=gray,
        )
        lines.append(f'{name} {label}')
        records.append(
          dict(split=split, key=name, file=file, label=label - 1, color=color)
        )
  os.makedirs(os.path.join(root, 'EmoLabel'), exist_ok=True)
  with open(
    os.path.join(root, 'EmoLabel', 'list_patition_label.txt'), 'w'
  ) as f:
    f.write('\n'.join(lines) + '\n')
  return records


AFFECTNET_HEADER = (
  'subDirectory_filePath,face_x,face_y,face_width,face_height,'
  'facial_landmarks,expression,valence,arousal'
)


def affectnet_landmarks(index):
  """68 x;y points, distinct per example."""
  return (np.arange(136, dtype=np.float32) * 0.5 + index).reshape(68, 2)


def _affectnet_codes(per_code):
  """Codes of one split: each of 0-7 `per_code` times, then the odd rows:
  8, 9, 10, and a face_width -1 row of code 1."""
  codes = [(code, False) for _ in range(per_code) for code in range(8)]
  return codes + [(8, False), (9, False), (10, False), (1, True)]


def skip_reason(code, negative_width, num_classes):
  """Why the builders skip an AffectNet row, or None (the documented rule)."""
  if code >= num_classes:
    return {
      7: 'code_7_contempt',
      8: 'code_8_none',
      9: 'code_9_uncertain',
      10: 'code_10_no_face',
    }[code]
  return 'face_width_negative' if negative_width else None


def write_affectnet_original(root, per_code=(('train', 2), ('test', 1))):
  """The original release: two CSVs and photos with a face box.

  Each photo is an 80x60 black JPEG with the face box (x=16,
  y=10, w=40, h=32) in the example's color; the first train photo's box
  runs past the right edge (clipped to the photo). Returns one record per row:
  split, key, file, code, negative_width, color, valence, arousal,
  landmarks [68, 2].
  """
  from PIL import Image

  records = []
  lists = os.path.join(root, 'Manually_Annotated_file_lists')
  os.makedirs(lists, exist_ok=True)
  for split, count in per_code:
    lines = [AFFECTNET_HEADER]
    for code, negative_width in _affectnet_codes(count):
      index = len(records)
      key = f'{index % 3}/{split}_{index:04d}.jpg'
      file = os.path.join('Manually_Annotated_Images', key)
      color = color_of(index)
      box = (16, 10, 40, 32) if index else (56, 10, 40, 32)
      photo = np.zeros((60, 80, 3), np.uint8)  # 40+ levels off any color
      x, y, w, h = box
      photo[y : y + h, x : x + w] = color
      os.makedirs(os.path.dirname(os.path.join(root, file)), exist_ok=True)
      Image.fromarray(photo).save(
        os.path.join(root, file), quality=95, subsampling=0
      )
      points = affectnet_landmarks(index)
      valence, arousal = (
        round(0.01 * index - 0.5, 6),
        round(0.3 - 0.02 * index, 6),
      )
      width = -1 if negative_width else w
      lines.append(
        f'{key},{x},{y},{width},{h},'
        f'{";".join(f"{v:.2f}" for v in points.reshape(-1))},'
        f'{code},{valence},{arousal}'
      )
      records.append(
        dict(
          split=split,
          key=key,
          file=file,
          code=code,
          negative_width=negative_width,
          color=color,
          valence=valence,
          arousal=arousal,
          landmarks=points,
        )
      )
    name = 'training.csv' if split == 'train' else 'validation.csv'
    with open(os.path.join(lists, name), 'w') as f:
      f.write('\n'.join(lines) + '\n')
  return records


def write_affectnet_npy(root, per_code=(('train', 2), ('test', 1))):
  """The npy release: {train,val}_set/images/<id>.jpg + annotations/*.npy.

  Faces are 32x32 (resized to 224 by the reader). Codes alternate between
  a NumPy string ('3') and an integer array, as releases differ; codes
  8-10 are included. Returns one record per image: split, key, file, code,
  negative_width (False), color, valence, arousal, landmarks.
  """
  records = []
  for split, count in per_code:
    folder = 'train_set' if split == 'train' else 'val_set'
    annotations = os.path.join(root, folder, 'annotations')
    os.makedirs(annotations, exist_ok=True)
    for code, negative_width in _affectnet_codes(count):
      if negative_width:  # no face boxes in this release
        continue
      index = len(records)
      key = str(index)
      file = os.path.join(folder, 'images', f'{key}.jpg')
      color = color_of(index)
      write_image(os.path.join(root, file), color, size=(32, 32))
      points = affectnet_landmarks(index)
      valence, arousal = 0.01 * index - 0.5, 0.3 - 0.02 * index
      stored = np.str_(str(code)) if index % 2 else np.array(code)
      np.save(os.path.join(annotations, f'{key}_exp.npy'), stored)
      np.save(os.path.join(annotations, f'{key}_val.npy'), np.str_(valence))
      np.save(os.path.join(annotations, f'{key}_aro.npy'), np.array(arousal))
      np.save(os.path.join(annotations, f'{key}_lnd.npy'), points.reshape(-1))
      records.append(
        dict(
          split=split,
          key=key,
          file=file,
          code=code,
          negative_width=False,
          color=color,
          valence=valence,
          arousal=arousal,
          landmarks=points,
        )
      )
  return records


def write_image_folder(
  root,
  classes=('10', '2', 'happy'),
  per_split=(('train', 2), ('test', 1), ('val', 1)),
):
  """root/<split>/<class>/<n>.<suffix>: sizes and formats vary by image.

  Suffixes cycle through .jpg, .png, .JPEG; sizes through 24x20, 20x24,
  16x16; the first test image is grayscale. Returns one record per image:
  split, file, class_name, color, size (w, h).
  """
  suffixes = ('.jpg', '.png', '.JPEG')
  sizes = ((24, 20), (20, 24), (16, 16))
  records = []
  for split, count in per_split:
    for class_name in classes:
      for n in range(count):
        index = len(records)
        file = f'{split}/{class_name}/{n:03d}{suffixes[index % 3]}'
        gray = split == 'test' and n == 0 and class_name == classes[0]
        color = color_of(index)
        if gray:
          color = (color[0],) * 3
        write_image(
          os.path.join(root, file), color, size=sizes[index % 3], gray=gray
        )
        records.append(
          dict(
            split=split,
            file=file,
            class_name=class_name,
            color=color,
            size=sizes[index % 3],
          )
        )
  return records
