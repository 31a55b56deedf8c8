"""The README's 'run it' command trains the offline demo to >= 97%."""

import json
import os
import subprocess
import sys

import pytest

import trainutil


@pytest.mark.slow  # 90 s: the second tier, which .ci/run runs every time
def test_default_config_reaches_97_percent_on_digits(digits_dir, tmp_path):
  workdir = tmp_path / 'demo'
  out = subprocess.run(
      [sys.executable, os.path.join(trainutil.REPO, 'train.py'),
       '--workdir', str(workdir), f'--config.data_dir={digits_dir}',
       '--config.progress_bar=False'],
      capture_output=True, text=True, timeout=480)
  assert out.returncode == 0, out.stderr[-3000:]
  summary = json.loads(out.stdout[out.stdout.index('{'):])
  assert summary['step'] == summary['total_steps']
  reports = sorted(os.listdir(workdir / 'eval'))
  assert len(reports) == 2  # test-<final step>.json and .png
  with open(workdir / 'eval' / reports[0]) as f:
    report = json.load(f)
  assert report['num_examples'] == 359
  assert report['accuracy'] >= 0.97, report['accuracy']
  assert summary['eval']['accuracy'] >= 0.97
