"""The main job: data -> stage 1 (V-JEPA) -> stage 2 (world model) -> stage 3 (planning on Wall).

Each stage writes into its own folder under the work directory and resumes on its own (Orbax
checkpoints with the grain iterator state). When a stage finishes, the pipeline writes
`<stage>/stage_done.json` (atomically); a stage with that file is skipped, so re-running the same
command after an interruption continues where it stopped.

Layout of `workdir`:
  data/          TFDS ArrayRecord dataset + stats.json
  pretrain/      stage-1 checkpoints, TensorBoard logs, summary.json, encoder/ (frozen export)
  world_model/   stage-2 checkpoints, TensorBoard logs, summary.json, model/ (read by stage 3)
  planning/      results.json, results.png, gifs/
  summary.json   the headline numbers of all stages
"""

import json
import os
import time
from typing import Any, Callable

from jepa_jax.data import wall_tfds
from jepa_jax.planning import run as planning_run
from jepa_jax.pretrain import train as pretrain_train
from jepa_jax.world_model import train as world_model_train

STAGES = ('data', 'pretrain', 'world_model', 'planning')


def _write_json(path: str, payload: Any) -> None:
  """Writes atomically: a reader never sees a half-written file."""
  tmp = f'{path}.tmp'
  with open(tmp, 'w') as f:
    json.dump(payload, f, indent=2, sort_keys=True, default=float)
  os.replace(tmp, path)


def _run_stage(stage_dir: str, name: str, run: Callable[[], dict]) -> dict:
  """Runs one stage unless it finished before; returns {'result': ..., 'seconds': ...}."""
  os.makedirs(stage_dir, exist_ok=True)
  marker = os.path.join(stage_dir, 'stage_done.json')
  if os.path.exists(marker):
    with open(marker) as f:
      done = json.load(f)
    print(f'[pipeline] {name}: already done, skipping ({marker})', flush=True)
    return done
  print(f'[pipeline] {name}: starting', flush=True)
  start = time.perf_counter()
  result = run()
  done = {'result': result, 'seconds': time.perf_counter() - start}
  _write_json(marker, done)
  print(f'[pipeline] {name}: done in {done["seconds"]:.1f} s', flush=True)
  return done


def run_pipeline(config, workdir: str) -> dict:
  """Runs (or resumes) all stages for `config` in `workdir`; returns and writes summary.json.

  Args:
    config: the full experiment ConfigDict (experiments/configs/wall.py).
    workdir: the job's directory (created).
  Returns:
    the summary: probe_error_px, probe_error_px_random_encoder, rollout_error (mean visual
    latent error over the validation horizon), rollout_error_constant_baseline, success_rate,
    random_policy_success_rate, mean_final_distance, plan_latency_s, stage_seconds, total_time_s.
  """
  workdir = os.path.abspath(workdir)
  dirs = {stage: os.path.join(workdir, stage) for stage in STAGES}
  data = _run_stage(dirs['data'], 'data', lambda: dict(wall_tfds.describe(
      wall_tfds.generate(dirs['data'], config.data, config.seed))))
  pretrain = _run_stage(dirs['pretrain'], 'stage 1 (V-JEPA pretraining)', lambda: (
      pretrain_train.train(config, dirs['pretrain'], dirs['data'])))
  world_model = _run_stage(dirs['world_model'], 'stage 2 (world model)', lambda: (
      world_model_train.train(config, dirs['world_model'], dirs['data'],
                              os.path.join(dirs['pretrain'], 'encoder'))))
  planning = _run_stage(dirs['planning'], 'stage 3 (planning)', lambda: (
      planning_run.run_planning(dirs['planning'], config,
                                os.path.join(dirs['world_model'], 'model'))))
  stages = dict(data=data, pretrain=pretrain, world_model=world_model, planning=planning)
  summary = _summarise(config, stages)
  _write_json(os.path.join(workdir, 'summary.json'), summary)
  print(format_summary(summary), flush=True)
  return summary


def _summarise(config, stages: dict) -> dict:
  pretrain = stages['pretrain']['result']
  world_model = stages['world_model']['result']
  planning = stages['planning']['result']
  stage_seconds = {name: stage['seconds'] for name, stage in stages.items()}
  return dict(
      variant=config.get('variant', ''),
      probe_error_px=pretrain['probe_error_px'],
      probe_error_px_random_encoder=pretrain['probe_error_px_random_encoder'],
      rollout_error=world_model['rollout_error']['visual_mean'],
      rollout_error_constant_baseline=world_model['constant_baseline']['visual_mean'],
      success_rate=planning['success_rate'],
      random_policy_success_rate=planning['random_policy_success_rate'],
      mean_final_distance=planning['mean_final_distance'],
      random_policy_mean_final_distance=planning['random_policy_mean_final_distance'],
      episodes=planning['episodes'],
      plan_latency_s=planning['plan_latency_median_s'],
      stage_seconds=stage_seconds,
      total_time_s=sum(stage_seconds.values()),
  )


def format_summary(summary: dict) -> str:
  """The human-readable table printed at the end of the main job."""
  rows = [
      ('encoder probe error (px)', f"{summary['probe_error_px']:.2f}"
       f"   (random encoder {summary['probe_error_px_random_encoder']:.2f})"),
      ('rollout latent error', f"{summary['rollout_error']:.4f}"
       f"   (constant latent {summary['rollout_error_constant_baseline']:.4f})"),
      ('Wall success rate', f"{summary['success_rate']:.1%}"
       f"   (random policy {summary['random_policy_success_rate']:.1%},"
       f" {summary['episodes']} episodes)"),
      ('mean final distance (px)', f"{summary['mean_final_distance']:.2f}"
       f"   (random policy {summary['random_policy_mean_final_distance']:.2f})"),
      ('plan latency (s)', f"{summary['plan_latency_s']:.3f}"),
      *((f'time: {name} (s)', f'{seconds:.1f}') for name, seconds in
        summary['stage_seconds'].items()),
      ('total time (s)', f"{summary['total_time_s']:.1f}"),
  ]
  width = max(len(name) for name, _ in rows)
  return '\n'.join(['', 'jepa_jax pipeline summary', '-' * (width + 30)] +
                   [f'{name:<{width}}  {value}' for name, value in rows])
