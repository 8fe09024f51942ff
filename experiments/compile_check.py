r"""Before you rent a pod: compile every stage for a TPU slice on this CPU host; does it fit?

  python -m experiments.compile_check --config=experiments/configs/wall.py:paper_vitg \
      --topology=v5p:4x4x4 [--programs=pretrain,planning] [--devices=1]

Builds each stage's real program from the config (stage-1 train step, stage-2 train step, LeWM
train step, a batch of episodes planned at the config's budget), lays the config's `mesh` and
`partition_rules` over the slice's devices and compiles it with libtpu's TPU compiler
(`jepa_jax.aot`; nothing runs, no data or checkpoint is read). Prints one markdown row per
program: chips, hosts, mesh, per-chip bytes (parameters + optimiser state, temporaries, total)
against the chip's HBM, matmul FLOPs per chip per call, the roofline time at the chip's bf16
peak with the steps/s or plans/s it implies, and the compile time. A program that does not fit
ends the run with exit status 1 and one line naming it, its bytes, the chip's HBM and the mesh
change to make. Needs libtpu (`pip install -e ".[test]"`).
"""

import sys

from absl import flags
import jax
from ml_collections import config_flags

from experiments import cli
from experiments import configs
from jepa_jax import aot

config_flags.DEFINE_config_file('config', configs.WALL_TINY, 'Experiment config (file:variant).')
flags.DEFINE_string('topology', None, f'The TPU slice to compile for: {aot.TOPOLOGY_HELP}.',
                    required=True)
flags.DEFINE_list('programs', list(aot.PROGRAMS),
                  f'Programs to compile, among {", ".join(aot.PROGRAMS)}.')
flags.DEFINE_integer('devices', None, 'Compile for the first N devices of the slice only '
                     '(1: a single chip); default all of them.')
FLAGS = flags.FLAGS


def main(argv):
  del argv
  if not jax.config.jax_platforms:  # nothing runs here: the host's CPU is all this needs
    jax.config.update('jax_platforms', 'cpu')
  reports = aot.check(FLAGS.config, FLAGS.topology, tuple(FLAGS.programs), FLAGS.devices)
  print(aot.TABLE_HEADER)
  print('|' + '---|' * aot.TABLE_HEADER.count(' | ') + '---|')
  for report in reports:
    print(aot.table_row(report))
  sys.stdout.flush()
  too_big = [aot.not_fitting_message(r) for r in reports if not r.fits]
  if too_big:
    raise ValueError('; '.join(too_big))


if __name__ == '__main__':
  cli.run(main)
