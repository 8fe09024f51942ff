r"""Stage 3: MPC planning on Wall with the exported world model (or the true-dynamics oracle).

  python -m experiments.plan --config=experiments/configs/wall.py:tiny --workdir=/tmp/run/planning \
      [--world_model=/tmp/run/world_model/model]
  python -m experiments.plan --config=experiments/configs/wall.py:tiny --workdir=/tmp/oracle --oracle

Writes <workdir>/results.json (success_rate, random_policy_success_rate, mean_final_distance,
episodes, planner settings, plan_latency_median_s, ...), results.png and gifs/episode_<i>.gif.
"""

import json

from absl import app
from absl import flags
from ml_collections import config_flags

from experiments import configs

from jepa_jax.planning import run

config_flags.DEFINE_config_file('config', configs.WALL_TINY,
                                'Experiment config (file:variant).')
flags.DEFINE_string('workdir', None, 'Stage-3 output directory.', required=True)
flags.DEFINE_string('world_model', None,
                    'Exported stage-2 model (default <workdir>/../world_model/model).')
flags.DEFINE_bool('oracle', False, 'Plan with the true Wall dynamics (no learned model).')
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  results = run.run_planning(FLAGS.workdir, FLAGS.config, FLAGS.world_model,
                             use_oracle=FLAGS.oracle)
  keys = ('agent', 'success_rate', 'random_policy_success_rate', 'mean_final_distance',
          'episodes', 'plan_latency_median_s', 'eval_wall_s')
  print(json.dumps({k: results[k] for k in keys}, indent=2))


if __name__ == '__main__':
  app.run(main)
