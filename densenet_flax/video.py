"""Faces over time in a video: tracks, per-track summaries and a timeline.

A track is a face followed from one sampled frame to the next by the overlap
(IoU) of its boxes: each face takes the track whose last box it overlaps
most, at least `min_iou`. What ends a track, so that the face reappears
under a new id:
  - the face is not found for more than `max_missed` sampled frames in a row
    (turned away, covered, out of the picture);
  - it moves further between two sampled frames than its boxes overlap (fast
    motion, or frames sampled far apart: lower --every, raise --fps);
  - two faces cross: the matching is greedy, and may swap their ids.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

Box = tuple[int, int, int, int]


def iou(a: Box, b: Box) -> float:
  """Intersection over union of two (x, y, w, h) boxes."""
  ax, ay, aw, ah = a
  bx, by, bw, bh = b
  w = min(ax + aw, bx + bw) - max(ax, bx)
  h = min(ay + ah, by + bh) - max(ay, by)
  if w <= 0 or h <= 0:
    return 0.0
  inter = w * h
  return inter / (aw * ah + bw * bh - inter)


class FaceTracker:
  """Gives each face box a track id that follows it across frames.

  Args:
    min_iou: the least overlap with a track's last box that continues it.
    max_missed: sampled frames a track may go unseen before it ends.
  """

  def __init__(self, min_iou: float = 0.3, max_missed: int = 2):
    if not 0 < min_iou <= 1:
      raise ValueError(f'min_iou={min_iou}: expected a value in (0, 1]')
    if max_missed < 0:
      raise ValueError(f'max_missed={max_missed}: expected 0 or more')
    self.min_iou, self.max_missed = min_iou, max_missed
    self._live: dict[int, tuple[Box, int]] = {}  # id -> (last box, missed)
    self._next_id = 0

  def update(self, boxes: Sequence[Box]) -> list[int]:
    """The track id of each box of the next frame (new faces get new ids)."""
    pairs = sorted(
      (
        (iou(last, box), track_id, i)
        for track_id, (last, _) in self._live.items()
        for i, box in enumerate(boxes)
      ),
      reverse=True,
    )
    ids: list[int | None] = [None] * len(boxes)
    for overlap, track_id, i in pairs:
      if overlap < self.min_iou:
        break
      if ids[i] is None and track_id not in ids:
        ids[i] = track_id
    for track_id, (last, missed) in list(self._live.items()):
      if track_id not in ids:
        if missed + 1 > self.max_missed:
          del self._live[track_id]
        else:
          self._live[track_id] = (last, missed + 1)
    for i, box in enumerate(boxes):
      if ids[i] is None:
        ids[i] = self._next_id
        self._next_id += 1
      self._live[ids[i]] = (tuple(box), 0)
    return ids


def by_track(rows: Sequence[dict]) -> list[tuple[int | None, list[dict]]]:
  """(track id, its rows in order) per track, by id; whole-frame rows (no
  track) last."""
  tracks = {}
  for row in rows:
    tracks.setdefault(row['track'], []).append(row)
  return sorted(tracks.items(), key=lambda item: (item[0] is None, item[0]))


def summarize(rows: Sequence[dict], class_names: Sequence[str]) -> dict:
  """Per track of one video's rows: first and last time (and frame), frames
  seen, mean probabilities and the dominant emotion; and the same means over
  every row of the video.

  Args:
    rows: predict.py's rows (or FaceEmotionDetector.track's answers) of one
      video, each with `track`, `frame`, `time_s` and probabilities under
      `probabilities` (or `emotions`).
    class_names: the model's classes, in order.
  """

  def probabilities(row):
    p = row.get('probabilities', row.get('emotions'))
    return np.array([p[name] for name in class_names], np.float64)

  def means(group):
    mean = np.mean([probabilities(r) for r in group], axis=0)
    return (
      {name: float(v) for name, v in zip(class_names, mean)},
      class_names[int(np.argmax(mean))],
    )

  summary = []
  for track_id, group in by_track(rows):
    emotions, label = means(group)
    summary.append(
      {
        'track': track_id,
        'first_s': group[0]['time_s'],
        'last_s': group[-1]['time_s'],
        'first_frame': group[0]['frame'],
        'last_frame': group[-1]['frame'],
        'frames': len(group),
        'emotions': emotions,
        'dominant': label,
      }
    )
  overall, dominant = means(rows) if rows else (None, None)
  return {'tracks': summary, 'emotions': overall, 'dominant': dominant}


def plot_timeline(
  rows: Sequence[dict], class_names: Sequence[str], path: str, title: str = ''
) -> str:
  """Each track's emotion probabilities against time, one panel per track,
  written as a PNG at `path`."""
  import matplotlib

  matplotlib.use('Agg')
  from matplotlib import pyplot as plt

  from densenet_flax import atomic

  tracks = by_track(rows)
  panels = max(len(tracks), 1)
  figure, axes = plt.subplots(
    panels, 1, sharex=True, squeeze=False, figsize=(8, 1.2 + 1.8 * panels)
  )
  colors = plt.get_cmap('tab10')
  for ax, (track_id, group) in zip(axes[:, 0], tracks):
    times = [
      r['time_s'] if r['time_s'] is not None else r['frame'] for r in group
    ]
    for k, name in enumerate(class_names):
      ax.plot(
        times,
        [r['probabilities'][name] for r in group],
        marker='.',
        color=colors(k % 10),
        label=name,
      )
    ax.set_ylim(0, 1)
    ax.set_ylabel('whole frame' if track_id is None else f'track {track_id}')
  if not tracks:
    axes[0, 0].text(0.5, 0.5, 'no faces', ha='center', va='center')
  timed = any(r['time_s'] is not None for r in rows)
  axes[-1, 0].set_xlabel('time (s)' if timed else 'frame')
  axes[0, 0].legend(
    ncol=min(len(class_names), 7),
    fontsize='small',
    loc='lower left',
    bbox_to_anchor=(0, 1.02),
  )
  if title:
    figure.suptitle(title)
  figure.tight_layout()
  with atomic.replacing(path) as temporary:
    figure.savefig(temporary, format='png', dpi=100)
  plt.close(figure)
  return path


def sampled(
  index: int, video_fps: float, every: int, fps: float | None
) -> bool:
  """Whether frame `index` is read: every Nth frame, or `fps` per second of
  video (the first frame at or after each multiple of 1/fps)."""
  if fps is None:
    return index % every == 0
  if index == 0:
    return True
  previous = math.floor((index - 1) * fps / video_fps + 1e-9)
  return math.floor(index * fps / video_fps + 1e-9) > previous
