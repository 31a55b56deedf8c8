"""The README's 'run it' command trains the offline demo to >= 97%, with the
CPU kernels and with the generic ones that GPUs and TPUs run."""

import json
import os
import sys

import pytest

import multiprocess
import trainutil

KERNELS = ('auto', 'generic')


@pytest.mark.slow  # 90 s each: the second tier, which .ci/run runs every time
def test_default_config_reaches_97_percent_on_digits(digits_dir, tmp_path):
  """Both runs at once, in their own processes (DENSENET_FLAX_KERNELS=auto,
  which is 'cpu' here, and 'generic'): much of a run is single-threaded."""
  runs = multiprocess.Processes(
    lambda i: [
      sys.executable,
      os.path.join(trainutil.REPO, 'train.py'),
      '--workdir',
      str(tmp_path / KERNELS[i]),
      f'--config.data_dir={digits_dir}',
      '--config.progress_bar=False',
    ],
    len(KERNELS),
    tmp_path / 'logs',
    'demo',
    env=lambda i: dict(os.environ, DENSENET_FLAX_KERNELS=KERNELS[i]),
  )
  runs.check(timeout=900)
  for i, kernels in enumerate(KERNELS):
    output = runs.output(i)
    assert (
      f'Kernels: {"cpu" if kernels == "auto" else kernels} '
      f'(DENSENET_FLAX_KERNELS={kernels})'
    ) in output
    summary = json.loads(
      output[output.index('{\n  "step"') : output.rindex('}') + 1]
    )
    assert summary['step'] == summary['total_steps']
    workdir = tmp_path / kernels
    reports = sorted(os.listdir(workdir / 'eval'))
    assert len(reports) == 2  # test-<final step>.json and .png
    with open(workdir / 'eval' / reports[0]) as f:
      report = json.load(f)
    assert report['num_examples'] == 359
    assert report['accuracy'] >= 0.97, (kernels, report['accuracy'])
    assert summary['eval']['accuracy'] >= 0.97
