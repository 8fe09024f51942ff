"""End-to-end: the main job on the `smoke` config with LeWM (`--config.method=lewm`; the
three-stage default's main job runs in test_label_curve.py) has exactly its
method's stages, learns something a broken pipeline would not, resumes, refuses a changed
setting, reruns only what changed, runs its pixels / proprio x trained / random-encoder
ablation, and checks later stages' settings before the first one starts.

The tests share one job (`job`) and run on one xdist worker, in file order (`--dist loadgroup`).
"""

import json
import os

import pytest

from experiments.configs import wall as wall_configs
from jepa_jax import layout, main_job

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group('smoke_pipeline')]


@pytest.fixture(scope='module')
def job(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('job')
  config = wall_configs.get_config('smoke')
  config.method = 'lewm'
  return config, workdir, main_job.run_job(config, str(workdir))


def _without_provenance(summary):
  return {k: v for k, v in summary.items() if k != 'provenance'}


def test_lewm_job_has_only_its_stages(job):
  config, workdir, summary = job
  assert config.method == 'lewm' and summary['method'] == 'lewm'
  for stage in layout.stages('lewm'):
    assert os.path.exists(workdir / stage / 'stage_done.json'), stage
  # No stage-1 or stage-2 folder: LeWM has neither.
  assert not os.path.exists(workdir / 'pretrain') and not os.path.exists(workdir / 'world_model')
  assert os.path.isdir(workdir / layout.world_model_export('lewm'))
  assert os.path.exists(workdir / 'lewm' / 'cost_landscape.png')
  assert os.path.exists(workdir / 'planning' / 'results.png')
  with open(workdir / 'summary.json') as f:
    assert json.load(f) == json.loads(json.dumps(summary))
  assert set(summary['stage_seconds']) == set(layout.stages('lewm'))


def test_smoke_job_beats_its_hollow_baselines(job):
  # A predictor that ignores its inputs, an encoder that maps every frame alike, or a planner
  # that acts at random fails one of these (all measured on the same clips / episodes).
  config, _, summary = job
  assert summary['rollout_error'] < summary['rollout_error_constant_baseline']
  assert summary['episodes'] == config.planning.num_episodes
  assert summary['episode_set'] == 'reference'
  assert summary['mean_final_distance'] < summary['random_policy_mean_final_distance']
  assert summary['success_ci']['low'] <= summary['success_rate'] <= summary['success_ci']['high']
  encoder = summary['encoder']
  assert (encoder['geometry_latent_distance_spearman'] >
          encoder['geometry_latent_distance_spearman_random_encoder'])


def test_rerun_skips_finished_stages(job):
  config, workdir, summary = job
  again = main_job.run_job(config, str(workdir))
  assert _without_provenance(again) == _without_provenance(summary)


def test_changed_setting_is_refused_and_overwrite_reruns_only_it(job):
  config, workdir, summary = job
  changed = config.copy_and_resolve_references()
  changed.planning.num_episodes = 2
  with pytest.raises(ValueError, match=r'stage 3 .*planning\.num_episodes: 8 -> 2.*--overwrite'):
    main_job.run_job(changed, str(workdir))
  rerun = main_job.run_job(changed, str(workdir), overwrite=True)
  assert rerun['episodes'] == 2
  assert rerun['stage_seconds']['lewm'] == summary['stage_seconds']['lewm']
  assert os.path.isdir(workdir / 'planning.replaced-1')


def test_ablation_trains_the_missing_cells_and_reuses_the_job_model(job):
  # LeWM with and without proprio, with the encoder learning and held at its random init.
  config, workdir, _ = job
  changed = config.copy_and_resolve_references()
  changed.planning.num_episodes = 2
  table = main_job.run_job(changed, str(workdir), overwrite=True, ablation=True)['ablation']
  assert sorted(table['rows']) == sorted(f'{row}/{encoder}' for row in main_job.ABLATION_ROWS
                                         for encoder in ('trained', 'random_encoder'))
  assert table['rows']['pixels_only/trained']['world_model'] == str(
      workdir / layout.world_model_export('lewm'))
  for row in table['rows'].values():
    assert row['success_ci']['low'] <= row['success_rate'] <= row['success_ci']['high']
  with open(workdir / 'ablation' / 'random_encoder' / 'no_proprio' / 'stage_done.json') as f:
    assert json.load(f)['settings']['lewm']['train_encoder'] is False


def test_bad_later_setting_fails_before_the_first_stage(tmp_path):
  bad = wall_configs.get_config('smoke')
  bad.planning.cem.num_samples = 4
  with pytest.raises(ValueError, match='planning.cem: num_elites'):
    main_job.run_job(bad, str(tmp_path / 'fresh'))
  assert not os.path.exists(tmp_path / 'fresh')


def test_unknown_method_is_one_line(tmp_path):
  bad = wall_configs.get_config('smoke')
  bad.method = 'vjepa'
  with pytest.raises(ValueError, match=r"method='vjepa' is not a method; choose one of"):
    main_job.run_job(bad, str(tmp_path / 'fresh'))
