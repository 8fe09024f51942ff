"""End-to-end: the main job on the `smoke` config completes, resumes, and plans better than a
random policy on the same Wall episodes."""

import json
import os

import pytest

from experiments.configs import wall as wall_configs
from jepa_jax import pipeline


@pytest.mark.slow
def test_smoke_pipeline_completes_and_beats_random_policy(tmp_path):
  config = wall_configs.get_config('smoke')
  summary = pipeline.run_pipeline(config, str(tmp_path))

  with open(tmp_path / 'summary.json') as f:
    assert json.load(f) == json.loads(json.dumps(summary))
  for stage in pipeline.STAGES:
    assert os.path.exists(tmp_path / stage / 'stage_done.json'), stage
  assert os.path.isdir(tmp_path / 'pretrain' / 'encoder')
  assert os.path.isdir(tmp_path / 'world_model' / 'model')
  assert os.path.exists(tmp_path / 'planning' / 'results.png')
  assert any(name.startswith('events.out.tfevents') for _, _, files in os.walk(tmp_path)
             for name in files)
  # Same episodes for planner and random policy: planning must get closer to the goal.
  assert summary['episodes'] == config.planning.num_episodes
  assert summary['mean_final_distance'] < summary['random_policy_mean_final_distance']
  assert summary['success_rate'] >= summary['random_policy_success_rate']

  # A second run finds every stage done and reproduces the summary without recomputing.
  again = pipeline.run_pipeline(config, str(tmp_path))
  assert again == summary
