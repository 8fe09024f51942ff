"""The label-efficiency curve (`run_pipeline --label_curve`, jepa_jax/label_curve.py) on the
smoke config at fractions 1 and 0.5: after a three_stage main job in the same folder (its
stages are the curve's fraction-1 three_stage cell, reused), every other cell trains and plans
on the same episodes, LeWM at 0.5 reads half the trajectories, the json's intervals are the
Wilson intervals of the planners' own counts, the plot is a PNG, and a rerun trains nothing.
Bad fractions and settings fail in one line before any folder is made.

The slow tests share one curve (`curve`) and run on one xdist worker (`--dist loadgroup`).
"""

import json
import os

import pytest
from PIL import Image

from experiments.configs import wall as wall_configs
from jepa_jax import label_curve, main_job
from jepa_jax.data import pipeline
from jepa_jax.planning import confidence

pytestmark = pytest.mark.xdist_group('label_curve')

FRACTIONS = ('1', '0.5')


def _smoke_config():
  """The smoke config at a test's budget: 4 episodes, no planning_extra rows, short training."""
  config = wall_configs.get_config('smoke')
  assert not config.planning_extra  # the curve must work with the main row alone
  config.planning.update(num_episodes=4, num_gifs=0, latency_repeats=1)
  config.planning.cem.update(num_samples=32, num_iters=2)
  config.pretrain.num_steps = 10
  config.world_model.num_steps = 10
  config.lewm.num_steps = 10
  return config


@pytest.fixture(scope='module')
def curve(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('curve')
  config = _smoke_config()
  main_config = config.copy_and_resolve_references()
  main_config.method = 'three_stage'
  main_summary = main_job.run_job(main_config, str(workdir))
  return config, workdir, main_summary, label_curve.run(config, str(workdir), FRACTIONS)


def _done(stage_dir) -> dict:
  with open(os.path.join(stage_dir, 'stage_done.json')) as f:
    return json.load(f)


def _cells(table):
  for key, cells in table['cells'].items():
    for cell, entry in cells.items():
      yield key, cell, entry


@pytest.mark.slow
def test_every_cell_ran_and_the_main_job_is_the_first_three_stage_cell(curve):
  _, workdir, main_summary, table = curve
  assert sorted(table['cells']) == sorted(FRACTIONS)
  for key, cell, entry in _cells(table):
    assert sorted(table['cells'][key]) == sorted(label_curve.CELLS)
    assert os.path.exists(os.path.join(os.path.dirname(entry['world_model']), 'stage_done.json'))
    assert os.path.exists(os.path.join(entry['planning_dir'], 'stage_done.json'))
  first = table['cells']['1']['three_stage']
  assert first['world_model'] == str(workdir / 'world_model' / 'model')
  assert first['planning_dir'] == str(workdir / 'planning')
  assert first['rows']['main']['success_rate'] == main_summary['success_rate']
  assert not os.path.exists(workdir / 'labels' / '1' / 'three_stage')
  # The floor trained on stage 1's random init, exported once.
  random_encoder = str(workdir / 'labels' / 'random_encoder' / 'encoder')
  for key in FRACTIONS:
    floor = table['cells'][key]['random_encoder']
    assert _done(os.path.dirname(floor['world_model']))['settings']['encoder_path'] == (
        random_encoder)
  assert os.path.isdir(random_encoder)


@pytest.mark.slow
def test_each_cell_trains_on_its_fraction_of_the_labels(curve):
  config, workdir, _, table = curve
  total = config.data.num_train_trajectories
  for key, cell, entry in _cells(table):
    fraction = float(key)
    assert entry['labeled_fraction'] == fraction
    assert entry['labeled_trajectories'] == round(fraction * total), (key, cell)
  lewm_half = workdir / 'labels' / '0.5' / 'lewm' / 'lewm'
  with open(lewm_half / 'summary.json') as f:
    trained_on = json.load(f)['labeled_trajectories']
  assert trained_on == total // 2 == pipeline.labeled_trajectories(
      label_curve.cell_config(config, 'lewm', 0.5))
  assert _done(lewm_half)['settings']['labeled_fraction'] == 0.5
  # Stage 1 is shared: it trained on every trajectory's frames, once.
  assert _done(workdir / 'pretrain')['settings']['method'] == 'three_stage'


@pytest.mark.slow
def test_rates_are_the_planners_counts_with_wilson_intervals_on_the_same_episodes(curve):
  config, _, _, table = curve
  episodes = config.planning.num_episodes
  assert table['episodes'] == episodes and table['rows'] == ['main']
  episode_infos = []
  for key, cell, entry in _cells(table):
    with open(os.path.join(entry['planning_dir'], 'results.json')) as f:
      results = json.load(f)
    episode_infos.append(results['episode_info'])
    row = entry['rows']['main']
    assert row['success_rate'] == results['success_rate'], (key, cell)
    assert row['episodes'] == episodes
    successes = round(row['success_rate'] * episodes)
    assert row['successes'] == successes
    expected = confidence.wilson_interval(successes, episodes)
    assert row['success_ci']['low'] == pytest.approx(expected.low, abs=1e-12)
    assert row['success_ci']['high'] == pytest.approx(expected.high, abs=1e-12)
    assert row['success_ci']['low'] <= row['success_rate'] <= row['success_ci']['high']
    assert entry['rollout_error'] > 0 and entry['rollout_error_constant_baseline'] > 0
  assert all(info == episode_infos[0] for info in episode_infos)


@pytest.mark.slow
def test_plot_is_a_png_and_the_json_is_written(curve):
  _, workdir, _, table = curve
  with open(workdir / 'label_curve.png', 'rb') as f:
    assert f.read(8) == b'\x89PNG\r\n\x1a\n'
  with Image.open(workdir / 'label_curve.png') as image:
    image.verify()
    assert image.size[0] > 200 and image.size[1] > 200
  with open(workdir / 'label_curve.json') as f:
    assert json.load(f) == json.loads(json.dumps(table))
  assert not [name for name in os.listdir(workdir) if name.endswith('.tmp')]


@pytest.mark.slow
def test_rerun_skips_every_stage(curve, capsys):
  config, workdir, _, table = curve
  capsys.readouterr()
  again = label_curve.run(config, str(workdir), FRACTIONS)
  printed = capsys.readouterr().out
  # data, stage 1, the random init, and (model, planning) of 3 cells per fraction.
  assert printed.count('already done') == 3 + 2 * 3 * len(FRACTIONS)
  assert ' done in ' not in printed
  assert {k: v for k, v in again.items() if k != 'seconds'} == {
      k: v for k, v in table.items() if k != 'seconds'}


# ----------------------------------------------------------------------------- bad input (fast)


@pytest.mark.parametrize('fractions, message', [
    ([], r'--label_curve is empty'),
    (['1', 'half'], r"--label_curve: 'half' is not a number"),
    (['1', '0'], r'--label_curve: fraction 0 is not in \(0, 1\]'),
    (['1.5'], r'--label_curve: fraction 1.5 is not in \(0, 1\]'),
    (['nan'], r'--label_curve: fraction nan is not in \(0, 1\]'),
    (['1', '0.5', '1.0'], r'--label_curve lists fraction 1 twice'),
    # 0.5 and 0.505 of the smoke config's 64 training trajectories are both 32.
    (['0.5', '0.505'], r'fractions 0.5 and 0.505 both label 32 training trajectories'),
])
def test_bad_fractions_fail_before_any_work(tmp_path, fractions, message):
  with pytest.raises(ValueError, match=message):
    label_curve.run(wall_configs.get_config('smoke'), str(tmp_path / 'fresh'), fractions)
  assert not os.path.exists(tmp_path / 'fresh')


@pytest.mark.parametrize('setting, value, message', [
    ('lewm.num_steps', 0, r'lewm.num_steps must be >= 1'),  # a LeWM cell's setting
    ('world_model.num_steps', 0, r'world_model.num_steps must be >= 1'),  # a three_stage cell's
    ('labeled_fraction', 0.1, r'--label_curve sets labeled_fraction for each cell'),
    ('encoder_source', 'export', r'compares stage 1\'s encoder with its random init'),
])
def test_bad_cell_settings_fail_before_any_work(tmp_path, setting, value, message):
  config = wall_configs.get_config('smoke')
  section, _, key = setting.rpartition('.')
  (config[section] if section else config)[key] = value
  with pytest.raises(ValueError, match=message):
    label_curve.run(config, str(tmp_path / 'fresh'), FRACTIONS)
  assert not os.path.exists(tmp_path / 'fresh')
