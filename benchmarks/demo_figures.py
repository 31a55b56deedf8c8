"""The README's demo figures, from a real run of the offline demo.

  python -m benchmarks.demo_figures [--workdir /tmp/demo] [--out docs/images]

Trains the demo (configs/default.py: DenseNet-BC on scikit-learn's digits)
into --workdir with train.py, unless a finished run is already there, then
draws its training curves (metrics.jsonl) and the confusion matrix of its
final test evaluation (eval/*.json) as demo_curves.png and
demo_confusion.png in --out, and prints the test accuracy they show.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def final_test_report(workdir: str) -> tuple[str, dict]:
  """The newest test-split report of the run (the one train.py writes last)."""
  paths = sorted(
    glob.glob(os.path.join(workdir, 'eval', 'test-*.json')),
    key=os.path.getmtime,
  )
  if not paths:
    raise FileNotFoundError(f'{workdir}/eval: no test report; train first')
  with open(paths[-1]) as f:
    return paths[-1], json.load(f)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--workdir', default='/tmp/densenet_flax_demo')
  parser.add_argument('--out', default=os.path.join(REPO, 'docs', 'images'))
  args = parser.parse_args(argv)

  from densenet_flax import reporting

  if not glob.glob(os.path.join(args.workdir, 'eval', 'test-*.json')):
    subprocess.run(
      [
        sys.executable,
        os.path.join(REPO, 'train.py'),
        '--workdir',
        args.workdir,
      ],
      check=True,
    )
  path, report = final_test_report(args.workdir)
  os.makedirs(args.out, exist_ok=True)
  history = reporting.read_history(os.path.join(args.workdir, 'metrics.jsonl'))
  curves = reporting.plot_training_curves(
    history, os.path.join(args.out, 'demo_curves.png')
  )
  confusion = reporting.plot_confusion_matrix(
    report['confusion_matrix'],
    report['class_names'],
    os.path.join(args.out, 'demo_confusion.png'),
    title=f'digits test: accuracy {report["accuracy"]:.4f}',
  )
  print(
    f'{curves}\n{confusion}\nfrom {path}: test accuracy '
    f'{report["accuracy"]:.4f} over {sum(map(sum, report["confusion_matrix"]))} '
    f'images'
  )
  return 0


if __name__ == '__main__':
  sys.exit(main())
