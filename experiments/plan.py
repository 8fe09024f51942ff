r"""Stage 3: plan with the exported world model (or the true-dynamics oracle) and evaluate.

  python -m experiments.plan --config=experiments/configs/wall.py:tiny --workdir=/tmp/run/planning \
      [--world_model=/tmp/run/lewm/model]
  python -m experiments.plan --config=experiments/configs/point_maze.py:tiny --workdir=/tmp/oracle \
      --oracle
  python -m experiments.plan --config=experiments/configs/push_t.py:tiny --workdir=/tmp/run/oracle \
      --oracle --config.planning.oracle_cost=latent   # true dynamics, the learned latent's cost

Writes <workdir>/results.json (success rate with its 95 % interval, the random policy on the same
episodes, final distances, planner settings, protocol, latency, provenance), results.png and
gifs/episode_<i>.gif.
"""

from absl import flags
from ml_collections import config_flags

from experiments import cli
from experiments import configs
from jepa_jax import console, layout, outputs
from jepa_jax.planning import run

config_flags.DEFINE_config_file('config', configs.WALL_TINY, 'Experiment config (file:variant).')
flags.DEFINE_string('workdir', None, 'Stage-3 output directory.', required=True)
flags.DEFINE_string('world_model', None,
                    'Exported world model (default <workdir>/../world_model/model, or '
                    '<workdir>/../lewm/model for --config.method=lewm).')
flags.DEFINE_bool('oracle', False, 'Plan with the true dynamics (no learned model; with '
                  "--config.planning.oracle_cost=latent scored by the world model's encoder).")
flags.DEFINE_list('extra_rows', None, 'Only these rows of config.planning_extra besides the '
                  'main one (default: all; --extra_rows= plans the main row alone).')
FLAGS = flags.FLAGS


def main(argv):
  del argv
  rows = run.planning_rows(FLAGS.config, FLAGS.extra_rows)  # every row checked before any work
  world_model = (FLAGS.world_model or layout.sibling(
      FLAGS.workdir, layout.world_model_export(FLAGS.config.method))
                 if run.reads_world_model(rows, FLAGS.oracle) else None)
  workdir = outputs.prepare_output_dir(FLAGS.workdir, kind='planning',
                                       inputs=[world_model] if world_model else [])
  with outputs.WorkdirLock(workdir):
    results = run.run_planning(workdir, FLAGS.config, world_model, use_oracle=FLAGS.oracle,
                               extra_rows=FLAGS.extra_rows)
  ci = results['success_ci']
  console.result('stage 3', f"{results['agent']}: success {results['success_rate']:.1%} "
                 f"[{ci['low']:.1%}, {ci['high']:.1%}] on {results['episodes']} {results['episode_set']} "
                 f"episodes (random policy {results['random_policy_success_rate']:.1%}); "
                 f"{workdir}/results.json")


if __name__ == '__main__':
  cli.run(main)
