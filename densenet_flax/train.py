"""The train command line (the library is densenet_flax/training.py).

  python -m densenet_flax.train --workdir runs/demo [--config configs/x.py] \
      [--config.key=value ...] [--verbose]

Without --config it trains the offline digits demo (configs/default.py of
this checkout). A second run on a workdir in use exits at once with code 75
(EX_TEMPFAIL: a scheduler may retry later), naming the run that holds it.
"""

from __future__ import annotations

import json
import os
import sys


def default_config_path() -> str:
  """configs/default.py of this checkout (or of the current directory)."""
  here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  for root in (os.getcwd(), here):
    path = os.path.join(root, 'configs', 'default.py')
    if os.path.exists(path):
      return path
  return os.path.join('configs', 'default.py')


def main(argv=None):
  from absl import app
  from absl import flags
  from ml_collections import config_flags

  from densenet_flax import cli

  flags.DEFINE_string('workdir', None, 'Directory for checkpoints and logs.')
  flags.mark_flag_as_required('workdir')
  config_flags.DEFINE_config_file(
    'config',
    default_config_path(),
    'Config file (configs/*.py); fields override as --config.key=value.',
  )
  cli.define_verbose_flag()

  def run(args):
    from densenet_flax import run_lock
    from densenet_flax import training

    f = flags.FLAGS
    try:
      run_lock.check_free(f.workdir, f.config)
      cli.start_command(args, f.verbose)
      summary = training.train_and_evaluate(f.config, f.workdir)
    except run_lock.WorkdirLockedError as e:  # a scheduler may retry later
      print(f'error: {e}', file=sys.stderr)
      sys.exit(run_lock.EXIT_CODE)
    print(
      json.dumps({k: v for k, v in summary.items() if k != 'test'}, indent=2)
    )

  app.run(run, argv=argv)


if __name__ == '__main__':
  main()
