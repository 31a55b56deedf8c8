"""The evaluate command line (the library is densenet_flax/evaluation.py).

  python -m densenet_flax.evaluate --workdir runs/demo \
      [--checkpoint latest|best|STEP] [--split NAME] [--tta ten_crop] \
      [--raw_weights] \
      [--distributed [--coordinator_address HOST:PORT --num_processes N
                      --process_id I]]

Restores a checkpoint of a training workdir (its config is read from the
workdir), evaluates every example of the split exactly once, and writes
workdir/eval/<split>-<step>.json and .png. With --distributed it runs as one
of several processes (each evaluates its shard; process 0 writes).
"""

from __future__ import annotations


def main(argv=None):
  from absl import app
  from absl import flags

  from densenet_flax import cli

  flags.DEFINE_string('workdir', None, 'A training workdir.')
  flags.mark_flag_as_required('workdir')
  flags.DEFINE_string('checkpoint', 'latest', "'latest', 'best' or a step.")
  flags.DEFINE_string(
    'split',
    None,
    'Split to evaluate (default: the '
    "config's test_split, else its eval_split).",
  )
  flags.DEFINE_enum('tta', None, ['ten_crop'], 'Test-time augmentation.')
  flags.DEFINE_bool(
    'raw_weights',
    False,
    'For a run with config.ema_decay > 0: evaluate the '
    'trained weights instead of their EMA.',
  )
  flags.DEFINE_bool(
    'distributed', False, 'Run as one of several processes (jax.distributed).'
  )
  flags.DEFINE_string(
    'coordinator_address', '', "Process 0's host:port ('' = auto-detect)."
  )
  flags.DEFINE_integer('num_processes', 0, 'Processes (0 = auto-detect).')
  flags.DEFINE_integer(
    'process_id', -1, "This process's id (-1 = auto-detect)."
  )
  flags.DEFINE_integer(
    'distributed_timeout_s',
    100,
    'Seconds to wait for a dead peer before failing.',
  )
  cli.define_verbose_flag()

  def run(args):
    from densenet_flax import accelerators
    from densenet_flax import parallel

    f = flags.FLAGS
    cli.start_command(args, f.verbose)
    if f.distributed:
      parallel.initialize(
        f.coordinator_address,
        f.num_processes,
        f.process_id,
        f.distributed_timeout_s,
      )
    elif f.coordinator_address or f.num_processes or f.process_id != -1:
      raise app.UsageError(
        '--coordinator_address, --num_processes and '
        '--process_id need --distributed'
      )
    accelerators.log_backend()
    from densenet_flax import evaluation
    from densenet_flax import metrics

    report = evaluation.evaluate(
      f.workdir, f.checkpoint, f.split, f.tta, raw_weights=f.raw_weights
    )
    if 'files' in report:  # process 0
      print(
        f'{report["split"]} at step {report["step"]} (tta: {report["tta"]}):'
      )
      print(metrics.format_table(report))
      if report['selection']['test_used_for_selection']:
        print(
          f'note: checkpoint {f.checkpoint!r} was selected on '
          f'{report["split"]} itself (config.select_on=test, the FER '
          f"papers' protocol): this figure is optimistic"
        )
      for path in report['files']:
        print(f'wrote {path}')

  app.run(run, argv=argv)


if __name__ == '__main__':
  main()
