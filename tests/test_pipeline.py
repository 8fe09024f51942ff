"""End-to-end: the main job on the `smoke` config completes, resumes, refuses a changed setting,
reruns only what changed, plans better than a random policy on the same Wall episodes, and
runs its pixels / proprio x trained / random-encoder ablation."""

import json
import os

import pytest

from experiments.configs import wall as wall_configs
from jepa_jax import layout, main_job


@pytest.mark.slow
def test_smoke_pipeline_completes_resumes_and_checks_settings(tmp_path):
  config = wall_configs.get_config('smoke')
  summary = main_job.run_pipeline(config, str(tmp_path))

  with open(tmp_path / 'summary.json') as f:
    assert json.load(f) == json.loads(json.dumps(summary))
  for stage in layout.STAGES:
    assert os.path.exists(tmp_path / stage / 'stage_done.json'), stage
  # Wall's CPU default is LeWM: no stage-1 encoder, the world model carries its own.
  assert config.pretrain.objective == 'lewm' and summary['objective'] == 'lewm'
  assert not os.path.exists(tmp_path / layout.ENCODER_EXPORT)
  assert os.path.isdir(tmp_path / layout.WORLD_MODEL_EXPORT)
  assert os.path.exists(tmp_path / 'world_model' / 'cost_landscape.png')
  assert os.path.exists(tmp_path / 'planning' / 'results.png')
  assert any(name.startswith('events.out.tfevents') for _, _, files in os.walk(tmp_path)
             for name in files)
  # Same episodes for planner and random policy: planning must get closer to the goal.
  assert summary['episodes'] == config.planning.num_episodes
  assert summary['episode_set'] == 'reference'
  assert summary['mean_final_distance'] < summary['random_policy_mean_final_distance']
  assert summary['success_rate'] >= summary['random_policy_success_rate']
  assert summary['success_ci']['low'] <= summary['success_rate'] <= summary['success_ci']['high']
  # The model reads no proprio, so every row is pixels only.
  assert summary['pixels_only_success_rate'] == summary['success_rate']
  assert summary['encoder']['geometry_latent_distance_spearman_random_encoder'] is not None

  # A second run finds every stage done and reproduces the summary without recomputing.
  again = main_job.run_pipeline(config, str(tmp_path))
  assert {k: v for k, v in again.items() if k != 'provenance'} == {
      k: v for k, v in summary.items() if k != 'provenance'}

  # A changed setting is refused with one line naming it, before any work...
  changed = config.copy_and_resolve_references()
  changed.planning.num_episodes = 2
  with pytest.raises(ValueError, match=r'stage 3 .*planning\.num_episodes: 8 -> 2.*--overwrite'):
    main_job.run_pipeline(changed, str(tmp_path))
  # ...and with overwrite only the changed stage reruns; the old one is kept aside.
  rerun = main_job.run_pipeline(changed, str(tmp_path), overwrite=True)
  assert rerun['episodes'] == 2
  assert rerun['stage_seconds']['world_model'] == summary['stage_seconds']['world_model']
  assert os.path.isdir(tmp_path / 'planning.replaced-1')
  # The ablation on the same job (2 episodes): LeWM with and without proprio, with the encoder
  # learning and held at its random init; the job's own model is reused, not retrained.
  ablated = main_job.run_job(changed, str(tmp_path), ablation=True)
  table = ablated['ablation']
  assert sorted(table['rows']) == sorted(f'{row}/{encoder}' for row in main_job.ABLATION_ROWS
                                         for encoder in ('trained', 'random_encoder'))
  assert table['rows']['pixels_only/trained']['world_model'] == str(
      tmp_path / layout.WORLD_MODEL_EXPORT)
  for row in table['rows'].values():
    assert row['success_ci']['low'] <= row['success_rate'] <= row['success_ci']['high']
  assert ablated['pixels_only_success_rate_random_encoder'] == (
      table['rows']['pixels_only/random_encoder']['success_rate'])
  with open(tmp_path / 'ablation' / 'random_encoder' / 'no_proprio' / 'stage_done.json') as f:
    assert json.load(f)['settings']['lewm']['train_encoder'] is False
  # A bad setting of a later stage fails before the first stage starts.
  bad = config.copy_and_resolve_references()
  bad.planning.num_samples = 4
  with pytest.raises(ValueError, match='num_elites'):
    main_job.run_pipeline(bad, str(tmp_path / 'fresh'))
  assert not os.path.exists(tmp_path / 'fresh')
