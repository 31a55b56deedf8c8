"""Prepared TFDS builders, failing fast when the data is absent and offline.

TFDS retries the network for minutes before giving up on a dataset that is not
prepared locally. `load_builder` checks first: a prepared dataset is used as
is; otherwise the manual files or the download hosts are checked, and a clear
error says what is missing and where to put it within seconds.

Also a command line, for machines where TFDS's own `tfds build` cannot start
(TFDS 4.9.10's CLI imports apache_beam unconditionally):

  python -m densenet_flax.datasets.prepare fer2013 --manual_dir ~/fer --data_dir ~/tfds
"""

from __future__ import annotations

import os
import socket
import urllib.parse

import tensorflow_datasets as tfds

import densenet_flax.datasets  # noqa: F401  (registers this project's builders)
from densenet_flax.datasets import image_builder

HOST_TIMEOUT_S = 3.0


def _reachable(url: str) -> bool:
  parsed = urllib.parse.urlparse(url)
  port = parsed.port or (443 if parsed.scheme == 'https' else 80)
  try:
    with socket.create_connection(
      (parsed.hostname, port), timeout=HOST_TIMEOUT_S
    ):
      return True
  except OSError:
    return False


def _default_manual_dir(builder) -> str:
  return os.path.join(builder.data_dir_root, 'downloads', 'manual')


def load_builder(
  name: str,
  *,
  data_dir: str | None = None,
  manual_dir: str | None = None,
  skip_unreadable: bool = False,
) -> tfds.core.DatasetBuilder:
  """A prepared builder for `name` (this project's or TFDS's catalogue).

  skip_unreadable: for the image-file builders (rafdb, affectnet7/8,
  image_folder; array_record, image_builder.py), skip and count missing or
  unreadable images instead of refusing the build. image_folder takes its
  root as manual_dir.

  Raises FileNotFoundError naming what is missing and where it belongs when
  the dataset is neither prepared nor preparable from here.
  """
  kwargs = {}
  builder_cls = _builder_cls(name)
  if builder_cls and issubclass(builder_cls, image_builder.ImageFileBuilder):
    kwargs = builder_cls.builder_kwargs(
      manual_dir=manual_dir, skip_unreadable=skip_unreadable
    )
  builder = tfds.builder(name, data_dir=data_dir, **kwargs)
  if builder.is_prepared():
    return builder
  try:
    return _prepare(name, builder, manual_dir)
  except FileNotFoundError as e:
    older = _other_versions(builder)
    if not older:
      raise
    notes = getattr(builder, 'RELEASE_NOTES', None) or {}
    change = notes.get(str(builder.version), '')
    raise FileNotFoundError(
      f'{name} is prepared in {os.path.dirname(builder.data_dir)} at '
      f'version {", ".join(older)} only; this code reads version '
      f'{builder.version}'
      + (f' ({change})' if change else '')
      + f'. Prepare it again from the source files:\n'
      f'  python -m densenet_flax.datasets.prepare {name} --manual_dir DIR '
      f'--data_dir {builder.data_dir_root}\n\n{e}'
    ) from None


def _builder_cls(name: str):
  """The builder class registered as `name` ('x', 'x/config', 'x:1.0.0')."""
  try:
    return tfds.builder_cls(name.split('/')[0].split(':')[0])
  except tfds.core.DatasetNotFoundError:
    return None


def _other_versions(builder) -> list[str]:
  """Other versions of `builder`'s dataset prepared in its data dir."""
  directory = os.path.dirname(builder.data_dir)
  if not os.path.isdir(directory):
    return []
  found = [
    v
    for v in os.listdir(directory)
    if tfds.core.Version.is_valid(v)
    and v != str(builder.version)
    and os.path.isfile(os.path.join(directory, v, 'dataset_info.json'))
  ]
  return sorted(found, key=tfds.core.Version)


def _prepare(name: str, builder, manual_dir: str | None):
  manual_dir = manual_dir or _default_manual_dir(builder)
  urls = list(builder.url_infos or {})
  if builder.MANUAL_DOWNLOAD_INSTRUCTIONS:
    if urls:  # catalogue datasets with manual downloads name their files
      wanted = [os.path.join(manual_dir, os.path.basename(u)) for u in urls]
      missing = [path for path in wanted if not os.path.exists(path)]
      if missing:
        raise FileNotFoundError(
          f'{name} is not prepared in {builder.data_dir} and its manual '
          f'files are missing: {", ".join(missing)}\n\n'
          f'{builder.MANUAL_DOWNLOAD_INSTRUCTIONS}'
        )
    # This project's manual builders check their own files with exact paths.
  else:
    unreachable = sorted(
      {urllib.parse.urlparse(u).hostname for u in urls if not _reachable(u)}
    )
    if unreachable:
      raise FileNotFoundError(
        f'{name} is not prepared in {builder.data_dir}, and it cannot be '
        f'downloaded from here ({", ".join(unreachable)} unreachable). On a '
        f'machine with network run\n'
        f'  python -m densenet_flax.datasets.prepare {name} --data_dir DIR\n'
        f'then copy DIR/{name} to {builder.data_dir_root}/ (or point '
        f'config.data_dir at DIR).'
      )
  builder.download_and_prepare(
    download_config=tfds.download.DownloadConfig(manual_dir=manual_dir)
  )
  return builder


def main(argv=None):
  import argparse

  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument(
    'name', help='fer2013, ferplus, rafdb, affectnet7, image_folder, ...'
  )
  parser.add_argument('--data_dir', default=None)
  parser.add_argument('--manual_dir', default=None)
  parser.add_argument(
    '--skip_unreadable',
    action='store_true',
    help='skip (and count) missing or unreadable images of rafdb, '
    'affectnet7/8 and image_folder instead of failing',
  )
  args = parser.parse_args(argv)
  builder = load_builder(
    args.name,
    data_dir=args.data_dir,
    manual_dir=args.manual_dir,
    skip_unreadable=args.skip_unreadable,
  )
  print(
    f'{args.name} is prepared in {builder.data_dir}: '
    f'{ {k: v.num_examples for k, v in builder.info.splits.items()} }'
  )


if __name__ == '__main__':
  main()
