r"""The main job: generate data, train the method's models, plan.

--config.method=three_stage (the default; Push-T's CPU variants excepted): the V-JEPA encoder
on frames (stage 1), the world model on it (stage 2).
--config.method=lewm: LeWorldModel, encoder and predictor end to end.

  python -m experiments.run_pipeline --workdir=/tmp/jepa_wall
  python -m experiments.run_pipeline --workdir=DIR --config=experiments/configs/point_maze.py:tiny
  python -m experiments.run_pipeline --workdir=DIR --ablation      # + pixels/proprio ablation
  python -m experiments.run_pipeline --workdir=DIR --seeds=3       # 3 training seeds, mean +- CI
  python -m experiments.run_pipeline --workdir=DIR --label_curve=1,0.25,0.1
      # success against the share of action-labelled trajectories, three_stage (trained and
      # random-init encoder) and LeWM: label_curve.json / .png (jepa_jax/label_curve.py)

Re-running the same command resumes an interrupted job; a changed setting is an error unless
--overwrite is given.
"""

from absl import flags
from ml_collections import config_flags

from experiments import cli
from experiments import configs
from jepa_jax import label_curve, main_job

_CONFIG = config_flags.DEFINE_config_file('config', configs.WALL_TINY,
                                          'Experiment config file and variant.')
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for all stages and summary.json.',
                               required=True)
_OVERWRITE = flags.DEFINE_bool('overwrite', False,
                               'Rerun stages whose settings changed (old folders are kept).')
_SEEDS = flags.DEFINE_integer('seeds', 1, 'Training seeds (config.seed, +1, ...); with more than '
                              'one, each runs in <workdir>/seed_<s> and summary.json reports the '
                              'mean over seeds with a 95 % interval.')
_ABLATION = flags.DEFINE_bool('ablation', False,
                              'Also run the pixels-only / proprio-only / pixels + proprio rows, '
                              'each with the trained and a random-init encoder (ablation.json).')

_LABEL_CURVE = flags.DEFINE_list(
    'label_curve', None, 'Instead of the main job: the label-efficiency curve at these fractions '
    'of action-labelled training trajectories (e.g. 1,0.25,0.1), for three_stage, its random-init '
    'encoder and LeWM, whatever config.method is (label_curve.json, label_curve.png).')


def main(argv):
  del argv
  if _LABEL_CURVE.value is not None:
    if _SEEDS.value != 1 or _ABLATION.value:
      raise ValueError('--label_curve runs one seed without the ablation: drop --seeds and '
                       '--ablation (or run them as a separate job)')
    label_curve.run(_CONFIG.value, _WORKDIR.value, _LABEL_CURVE.value, overwrite=_OVERWRITE.value)
    return
  main_job.run_job(_CONFIG.value, _WORKDIR.value, overwrite=_OVERWRITE.value,
                   seeds=_SEEDS.value, ablation=_ABLATION.value)


if __name__ == '__main__':
  cli.run(main)
