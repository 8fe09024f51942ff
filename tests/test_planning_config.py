"""The `planning` section: nested planner / objective sub-sections, flags and rows overriding
them key by key, the planners built from them, and the one-line errors.

Expected values are written out from docs/reference.md §5 (CEM 300 x 30, 10 elites, std 1; MPPI
initial std 2, temperature 0.5; GD 500 steps, lr 1, noise 0.003; L2 on the final step, proprio
weight 0.1), not read back from the dataclasses under test."""

import json
import os

import pytest
from absl import flags
from ml_collections import config_flags

from experiments import configs
from experiments.configs import wall as wall_configs
from jepa_jax import config_sections, main_job
from jepa_jax.planning import cem, gradient, mppi, objectives, run
from jepa_jax.planning.config import PlanningConfig, as_planning_config, make_planner

CEM_REFERENCE = dict(num_samples=300, num_iters=30, num_elites=10, var_scale=1.0, momentum=0.0,
                     min_std=0.0)


def parse_config(*overrides):
  """The experiment config of `--config=wall.py:paper_vjepa` plus `--config.<key>=<value>`
  flags, parsed by ml_collections' flag machinery as the binaries do."""
  flag_values = flags.FlagValues()
  argv = ['prog', f"--config={os.path.join(configs.CONFIG_DIR, 'wall.py')}:paper_vjepa",
          *overrides]
  # The overrides are read from `sys_argv` (sys.argv in the binaries) when --config is parsed.
  config_flags.DEFINE_config_file('config', None, 'config', flag_values=flag_values,
                                  sys_argv=argv)
  flag_values(argv)
  return flag_values.config


def test_experiment_config_holds_every_default_as_nested_sections():
  planning = parse_config().planning
  assert planning.cem.to_dict() == CEM_REFERENCE
  assert planning.mppi.to_dict() == dict(CEM_REFERENCE, var_scale=2.0, temperature=0.5,
                                         variant='reference')
  assert planning.gradient.to_dict() == dict(num_steps=500, lr=1.0, noise_std=0.003,
                                             var_scale=1.0)
  assert planning.objective.to_dict() == dict(distance='l2', final_step_only=True,
                                              proprio_weight=0.1, visual_weight=1.0)
  assert as_planning_config(planning) == PlanningConfig()


def test_nested_flags_override_one_key_each():
  config = parse_config('--config.planning.cem.num_samples=200',
                        '--config.planning.objective.proprio_weight=0',
                        '--config.planning.mppi.temperature=2')
  planning = as_planning_config(config.planning)
  assert planning.cem == dict(CEM_REFERENCE, num_samples=200)
  assert planning.mppi['temperature'] == 2.0 and planning.mppi['num_samples'] == 300
  assert planning.objective == objectives.ObjectiveConfig('l2', True, 0.0, 1.0)
  with pytest.raises(AttributeError, match='num_sample'):  # misspelt (cli: one line)
    parse_config('--config.planning.cem.num_sample=200')


@pytest.mark.parametrize('section,key', [('cem', 'num_sample'), ('mppi', 'temp'),
                                         ('gradient', 'optimizer'), ('objective', 'alpha'),
                                         ('cem', 'horizon')])
def test_unknown_nested_key_is_a_one_line_error_naming_it(section, key):
  with pytest.raises(ValueError) as error:
    PlanningConfig(**{section: {key: 1}})
  message = str(error.value)
  assert '\n' not in message
  assert message.startswith(f'unknown key planning.{section}.{key}: planning.{section} has ')
  with pytest.raises(ValueError, match=f'planning.{section}.{key}'):  # in a planning_extra row
    as_planning_config(parse_config().planning, **{section: {key: 1}})


def test_bad_nested_value_names_the_sub_section():
  with pytest.raises(ValueError, match=r'^planning\.mppi: temperature=0\.0 must be > 0$'):
    PlanningConfig(planner='mppi', mppi=dict(temperature=0.0))
  with pytest.raises(ValueError, match=r'^planning\.objective: distance=.l3. must be one of'):
    PlanningConfig(objective=dict(distance='l3'))
  with pytest.raises(ValueError, match=r'^planning\.cem: num_elites=10 must be in \[2, num_s'):
    PlanningConfig(cem=dict(num_samples=8))


def test_row_overriding_one_nested_key_leaves_its_siblings():
  config = wall_configs.get_config('tiny')   # main row: CEM 100 x 10
  config.planning_extra.pixels_only = dict(objective=dict(proprio_weight=0.0))
  config.planning_extra.budget = dict(cem=dict(num_samples=300), mppi=dict(variant='tdmpc'))
  rows = run.planning_rows(config)
  assert rows['main'].cem == dict(CEM_REFERENCE, num_samples=100, num_iters=10)
  assert rows['budget'].cem == dict(CEM_REFERENCE, num_samples=300, num_iters=10)
  assert rows['budget'].mppi == dict(CEM_REFERENCE, var_scale=2.0, temperature=0.5,
                                     variant='tdmpc')
  assert rows['budget'].objective == rows['main'].objective
  assert rows['pixels_only'].objective == objectives.ObjectiveConfig('l2', True, 0.0, 1.0)
  assert rows['pixels_only'].cem == rows['main'].cem
  # The built-in 'mpc' row: replan every step, 300 samples, the main row's 10 iterations.
  assert (rows['mpc'].num_execute, rows['mpc'].warm_start) == (1, True)
  assert rows['mpc'].cem == dict(CEM_REFERENCE, num_samples=300, num_iters=10)
  # From a PlanningConfig too: the override merges into the instance's own sub-section.
  merged = as_planning_config(rows['main'], cem=dict(num_elites=4))
  assert merged.cem == dict(CEM_REFERENCE, num_samples=100, num_iters=10, num_elites=4)


def test_merge_overrides_nested_keys_only():
  base = {'a': {'b': 1, 'c': {'d': 2, 'e': 3}}, 'f': 4, 'g': {'h': 5}}
  got = config_sections.merge(base, {'a': {'c': {'d': 9}}, 'f': {'x': 1}, 'g': 7})
  assert got == {'a': {'b': 1, 'c': {'d': 9, 'e': 3}}, 'f': {'x': 1}, 'g': 7}
  assert base == {'a': {'b': 1, 'c': {'d': 2, 'e': 3}}, 'f': 4, 'g': {'h': 5}}  # untouched


def test_make_planner_builds_each_planner_from_its_section_and_the_protocol():
  protocol = dict(horizon=4, num_execute=2, action_low=-1.0, action_high=(1.0, 0.5))
  want = {
      'cem': (cem.cem_plan, cem.CEMConfig(
          num_samples=50, num_iters=30, num_elites=5, horizon=4, var_scale=1.0, momentum=0.2,
          min_std=0.0, action_low=-1.0, action_high=(1.0, 0.5), num_execute=2)),
      'mppi': (mppi.mppi_plan, mppi.MPPIConfig(
          num_samples=64, num_iters=30, num_elites=10, var_scale=2.0, momentum=0.0,
          min_std=0.0, temperature=2.0, variant='tdmpc', **protocol)),
      'gd': (gradient.gradient_plan, gradient.GradientConfig(
          num_steps=20, lr=1.0, noise_std=0.003, optimizer='gd', var_scale=0.0, **protocol)),
      'adam': (gradient.gradient_plan, gradient.GradientConfig(
          num_steps=20, lr=1.0, noise_std=0.003, optimizer='adam', var_scale=0.0, **protocol)),
  }
  for planner, expected in want.items():
    config = PlanningConfig(planner=planner, **protocol,
                            cem=dict(num_samples=50, num_elites=5, momentum=0.2),
                            mppi=dict(num_samples=64, temperature=2.0, variant='tdmpc'),
                            gradient=dict(num_steps=20, var_scale=0.0))
    assert make_planner(config) == expected, planner


def test_stage_recorded_with_other_planning_keys_is_refused_in_one_line(tmp_path):
  """A planning stage whose stage_done.json holds keys this config lacks (e.g. one run before
  the planner sub-sections, with flat `planning.num_samples`) is not silently reused."""
  config = wall_configs.get_config('smoke')
  settings = main_job.stage_settings(config, 'planning')
  old = json.loads(json.dumps(settings))
  for section in ('cem', 'mppi', 'gradient', 'objective'):
    del old['planning'][section]
  old['planning'].update(num_samples=64, num_iters=5, objective_proprio_weight=0.1)
  stage_dir = tmp_path / 'planning'
  stage_dir.mkdir()
  (stage_dir / 'stage_done.json').write_text(json.dumps({'result': {}, 'settings': old}))
  with pytest.raises(ValueError) as error:
    main_job.run_stage(str(stage_dir), 'planning', settings, lambda: {}, overwrite=False)
  message = str(error.value)
  assert '\n' not in message and 'ran with other settings' in message
  assert 'planning.cem.' in message and '--overwrite' in message
