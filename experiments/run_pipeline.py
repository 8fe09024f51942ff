"""The main job: generate Wall data, pretrain (V-JEPA), train the world model, plan.

  python -m experiments.run_pipeline --workdir=/tmp/jepa_wall
  python -m experiments.run_pipeline --workdir=DIR --config=experiments/configs/wall.py:paper

Re-running the same command resumes an interrupted job.
"""

from absl import app
from absl import flags
from ml_collections import config_flags

from experiments import configs

from jepa_jax import distributed
from jepa_jax import pipeline

_CONFIG = config_flags.DEFINE_config_file('config', configs.WALL_TINY,
                                          'Experiment config file and variant.')
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for all stages and summary.json.',
                               required=True)


def main(argv):
  del argv
  distributed.maybe_initialize()
  pipeline.run_pipeline(_CONFIG.value, _WORKDIR.value)


if __name__ == '__main__':
  app.run(main)
