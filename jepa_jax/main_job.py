"""The main job: the stages of `config.method`, then planning.

  three_stage   data -> stage 1 (V-JEPA encoder, frames only) -> stage 2 (world model on the
                frozen encoder) -> stage 3 (planning)
  lewm          data -> LeWorldModel (encoder and predictor end to end) -> stage 3 (planning)

Each stage writes into its own folder under the job directory (`layout.stages(method)`) and
resumes on its own (Orbax checkpoints with the grain iterator state). When a stage finishes, the
job writes `<stage>/stage_done.json` (atomically) with the settings it ran with; a rerun skips a
finished stage whose settings are unchanged, and stops with one line listing the differences
otherwise (`overwrite=True` reruns the changed stages, moving their old folders aside).

Before the first stage starts, every stage's config is built and checked and the job directory
is checked, claimed and locked (`outputs.WorkdirLock`), so a bad setting or an unwritable
folder fails in seconds, not after hours.

Layout of `workdir`:
  data/          TFDS ArrayRecord dataset + stats.json
  pretrain/      (three_stage) stage-1 checkpoints, TensorBoard logs, summary.json, encoder/
  world_model/   (three_stage) stage-2 checkpoints, logs, summary.json, model/ (read by stage 3)
  lewm/          (lewm) checkpoints, logs, summary.json, model/ (read by stage 3)
  planning/      results.json, results.png, gifs/
  summary.json   the headline numbers of all stages
"""

import json
import os
import time
from typing import Callable, Optional

from absl import logging

from jepa_jax import config_diff, config_sections, console, envs, layout, outputs, provenance
from jepa_jax.data import pipeline, trajectories
from jepa_jax.lewm import train as lewm_train
from jepa_jax.planning import confidence
from jepa_jax.planning import run as planning_run
from jepa_jax.planning.config import as_planning_config
from jepa_jax.pretrain import train as pretrain_train
from jepa_jax.world_model import train as world_model_train

STAGE_LABELS = {'data': 'data', 'pretrain': 'stage 1 (encoder)',
                'world_model': 'stage 2 (world model)', 'lewm': 'LeWM (encoder + world model)',
                'planning': 'stage 3 (planning)',
                'random_encoder': "stage 1's random init (encoder)"}
# The config sections each stage reads; a stage depends on its own and all earlier ones.
STAGE_SECTIONS = {
    'data': ('env', 'seed', 'data'),
    'pretrain': ('method', 'encoder_source', 'encoder_export', 'encoder', 'pretrain'),
    'world_model': ('labeled_fraction', 'world_model'),
    'lewm': ('method', 'labeled_fraction', 'lewm'),
    'planning': ('planning', 'planning_extra'),
}
# Settings that never change a stage's results (how often it logs or saves, how many steps
# are kept on disk).
NEUTRAL_KEYS = tuple(f'{section}.{key}' for section in ('pretrain', 'world_model', 'lewm')
                     for key in ('log_every', 'checkpoint_every', 'max_to_keep')) + (
                         'planning.num_gifs', 'planning.latency_repeats')
ENCODER_SOURCES = ('pretrain', 'export')


def stage_settings(config, stage: str) -> dict:
  """The settings `stage` depends on: its sections and those of the stages before it."""
  keys = []
  order = layout.stages(config.method)
  for name in order[:order.index(stage) + 1]:
    keys += STAGE_SECTIONS[name]
  return config_diff.select(config, keys)


def check_config(config) -> None:
  """Builds every stage's config so that a bad setting fails before any work (one line)."""
  envs.get(config.env)
  layout.check_method(config.method)
  trajectories.as_data_config(config.data)
  pipeline.labeled_trajectories(config)
  if is_end_to_end(config):
    lewm_train.as_lewm_config(config.lewm)
  elif config.encoder_source not in ENCODER_SOURCES:
    raise ValueError(f'encoder_source={config.encoder_source!r} must be one of '
                     f'{ENCODER_SOURCES}')
  if config.encoder_source == 'export':
    if not config.encoder_export:
      raise ValueError(
          'this variant plans on a frozen converted encoder (encoder_source=export): convert '
          'DINOv2-S/14 with `python -m experiments.convert_checkpoint --kind=dinov2 ...` and pass '
          '--config.encoder_export=DIR, or use the :paper_vjepa variant')
    if not os.path.isdir(config.encoder_export):
      raise ValueError(f'encoder_export={config.encoder_export} is not a folder; pass the '
                       '--output of experiments.convert_checkpoint --kind=dinov2')
  else:
    pretrain_train.as_pretrain_config(config.pretrain)
  if not is_end_to_end(config):
    world_model_train.as_world_model_config(config.world_model)
  planning_run.planning_rows(config)
  for _, overrides in ABLATION_ROWS.values():
    as_planning_config(config.planning, **overrides)
  if config.ablation_protocol != 'main' and config.ablation_protocol not in config.planning_extra:
    raise ValueError(f'ablation_protocol={config.ablation_protocol!r} must be \'main\' or a row of '
                     f'planning_extra ({", ".join(config.planning_extra) or "none"})')


def is_end_to_end(config) -> bool:
  """True for `method='lewm'`: LeWorldModel trains encoder and predictor together, and the
  job has no stage 1 or stage 2."""
  return layout.check_method(config.method) == 'lewm'


def _move_aside(path: str) -> str:
  """Renames `path` to the first free `<path>.replaced-<n>` (old results are never deleted)."""
  n = 1
  while os.path.exists(f'{path}.replaced-{n}'):
    n += 1
  os.replace(path, f'{path}.replaced-{n}')
  return f'{path}.replaced-{n}'


def _finished_record(stage_dir: str) -> Optional[dict]:
  """The `stage_done.json` record of a finished stage ({'result', 'seconds', 'settings'}), or
  None when the stage has not finished."""
  marker = os.path.join(stage_dir, 'stage_done.json')
  if not os.path.exists(marker):
    return None
  with open(marker) as f:
    return json.load(f)


def finished_with(stage_dir: str, settings: dict) -> bool:
  """True when the stage in `stage_dir` finished with `settings` (neutral keys aside)."""
  done = _finished_record(stage_dir)
  return done is not None and not config_diff.differences(
      done.get('settings', {}), settings, ignore=NEUTRAL_KEYS)


def run_stage(stage_dir: str, stage: str, settings: dict, run: Callable[[], dict],
              overwrite: bool) -> dict:
  """Runs one stage unless it finished with the same settings; returns {'result', 'seconds',
  'settings'}."""
  label = STAGE_LABELS[stage]
  marker = os.path.join(stage_dir, 'stage_done.json')
  done = _finished_record(stage_dir)
  if done is not None:
    changed = config_diff.differences(done.get('settings', {}), settings, ignore=NEUTRAL_KEYS)
    if not changed:
      console.result(label, f'already done, skipped ({marker})')
      return done
    if not overwrite:
      raise ValueError(
          f'{label} in {stage_dir} ran with other settings ({"; ".join(changed[:4])}'
          f'{"; ..." if len(changed) > 4 else ""}): use a new --workdir, or --overwrite to rerun '
          'the changed stages (their old folders are kept as <stage>.replaced-N)')
    logging.warning('%s: settings changed, old results moved to %s', label,
                    _move_aside(stage_dir))
  elif overwrite and os.path.isdir(stage_dir) and os.listdir(stage_dir):
    # An unfinished stage whose checkpoints may hold other settings: start it afresh.
    _move_aside(stage_dir)
  os.makedirs(stage_dir, exist_ok=True)
  start = time.perf_counter()
  result = run()
  done = {'result': result, 'seconds': time.perf_counter() - start, 'settings': settings}
  outputs.write_json(marker, done)
  console.result(label, f"done in {done['seconds']:.0f} s ({stage_dir})")
  return done


def run_stages(config, dirs: dict, overwrite: bool, *, data_dir: str,
               encoder_path: Optional[str] = None, extra_settings: Optional[dict] = None) -> dict:
  """Runs the stages of `config.method` named in `dirs` ({stage: folder}), in order, each with
  `run_stage` (resumable, skipped when finished with the same settings); returns {stage:
  its stage_done record}.

  data_dir: the dataset every stage reads (the 'data' stage generates it when in `dirs`);
  encoder_path: the frozen encoder stage 2 trains on (three_stage); stage 3 plans with the
  export of `dirs[<model stage>]`; extra_settings: added to every stage's recorded settings
  (inputs the config does not name, e.g. a random-init encoder's path).
  """
  stages = {}
  model_dir = dirs.get(layout.model_stage(config.method))
  runners = {
      'data': lambda: dict(trajectories.describe(
          trajectories.generate(data_dir, config.env, config.data, config.seed))),
      'pretrain': lambda: pretrain_train.train(config, dirs['pretrain'], data_dir),
      'world_model': lambda: world_model_train.train(config, dirs['world_model'], data_dir,
                                                     encoder_path),
      'lewm': lambda: lewm_train.train(config, dirs['lewm'], data_dir),
      'planning': lambda: planning_run.run_planning(dirs['planning'], config,
                                                    os.path.join(model_dir, 'model')),
  }
  for stage in layout.stages(config.method):
    if stage in dirs:
      settings = {**stage_settings(config, stage), **(extra_settings or {})}
      stages[stage] = run_stage(dirs[stage], stage, settings, runners[stage], overwrite)
  return stages


def run_job(config, workdir: str, *, overwrite: bool = False, seeds: int = 1,
            ablation: bool = False) -> dict:
  """The main job: the pipeline for `seeds` training seeds (config.seed, +1, ...), with the
  pixels / proprio ablation of every seed when `ablation`; returns and writes summary.json.

  One seed runs in `workdir` itself; several run in `workdir/seed_<s>` and `summary.json`
  reports every row's success as the mean over seeds with a t-based 95 % interval.
  """
  if seeds < 1:
    raise ValueError(f'--seeds={seeds} must be >= 1')
  check_config(config)
  workdir = outputs.prepare_output_dir(workdir, kind='main_job')
  with outputs.WorkdirLock(workdir):
    if seeds == 1:
      return _run_locked(config, workdir, overwrite, ablation)
    runs = []
    for offset in range(seeds):
      seed_config = config.copy_and_resolve_references()
      seed_config.seed = int(config.seed) + offset
      seed_dir = outputs.prepare_output_dir(os.path.join(workdir, f'seed_{seed_config.seed}'),
                                            kind='main_job')
      runs.append(_run_locked(seed_config, seed_dir, overwrite, ablation))
    summary = summarise_seeds(runs)
    outputs.write_json(os.path.join(workdir, 'summary.json'), summary)
    print(format_seeds(summary), flush=True)
    return summary


def _run_locked(config, workdir: str, overwrite: bool, ablation: bool = False) -> dict:
  dirs = {stage: os.path.join(workdir, stage) for stage in layout.stages(config.method)}
  encoder_path = os.path.join(workdir, layout.ENCODER_EXPORT)
  if not is_end_to_end(config) and config.encoder_source == 'export':
    del dirs['pretrain']  # a converted encoder: stage 1 has nothing to do
    encoder_path = config.encoder_export
  stages = run_stages(config, dirs, overwrite, data_dir=dirs['data'], encoder_path=encoder_path)
  summary = summarise(config, stages)
  if ablation:
    table = run_ablation(config, workdir, dirs['data'], overwrite)
    summary['ablation'] = table
    # The random-encoder counterpart of `pixels_only_success_rate`: the same model kind
    # (the job's, scored on its visual latents) on the random-init encoder.
    pixels_row = 'visual_cost_only' if uses_proprio(config) else 'pixels_only'
    summary['pixels_only_success_rate_random_encoder'] = (
        table['rows'][f'{pixels_row}/random_encoder']['success_rate'])
  outputs.write_json(os.path.join(workdir, 'summary.json'), summary)
  print(format_summary(summary), flush=True)
  return summary


# ----------------------------------------------------------------------------- ablation

# (world model, planning overrides) of every ablation row, per encoder. 'no_proprio' is a world
# model trained without proprioception; 'proprio' is the main job's (with it).
ABLATION_ROWS = {
    'pixels_only': ('no_proprio', dict(objective=dict(proprio_weight=0.0))),
    'visual_cost_only': ('proprio', dict(objective=dict(proprio_weight=0.0))),
    'proprio_only': ('proprio', dict(objective=dict(visual_weight=0.0))),
    'pixels_and_proprio': ('proprio', {}),
}


def run_ablation(config, workdir: str, data_dir: str, overwrite: bool) -> dict:
  """Pixels only / proprio only / pixels + proprio, each with the trained encoder and with a
  random-init encoder of the same architecture, on the main job's episodes and protocol
  (`config.ablation_protocol`: 'main' or a row of `planning_extra`); writes ablation.json.

  Two-stage jobs train stage-2 models on stage 1's encoder and on its random init; LeWM jobs
  train LeWM with the encoder learning and with it held at its random init
  (`lewm.train_encoder=False`). The proprio models embed proprio with the job's width, or
  `world_model.proprio_emb_dim` when the job's LeWM reads none. Models trained here live in
  `workdir/ablation/<encoder>/<world model>/`, each a resumable stage like the main job's.
  """
  if config.encoder_source != 'pretrain':
    raise ValueError('--ablation compares trained encoders with their random init; this config '
                     'plans on a frozen converted encoder (encoder_source=export)')
  root = os.path.join(workdir, 'ablation')
  protocol = config.ablation_protocol
  base_planning = config_sections.merge(
      config.planning, config.planning_extra[protocol] if protocol != 'main' else {})
  start = time.perf_counter()
  rows = {}
  for encoder_name in ('trained', 'random_encoder'):
    models = {name: _ablation_world_model(config, workdir, data_dir, encoder_name, name,
                                          overwrite)
              for name in ('proprio', 'no_proprio')}
    for row, (model_name, overrides) in ABLATION_ROWS.items():
      row_config = config.copy_and_resolve_references()
      row_config.planning = config_sections.merge(base_planning, {**overrides, 'num_gifs': 0})
      row_config.planning_extra = {}
      row_dir = os.path.join(root, encoder_name, f'planning_{row}')
      settings = {**stage_settings(row_config, 'planning'), 'world_model': models[model_name]}
      result = run_stage(row_dir, 'planning', settings, lambda: planning_run.run_planning(
          row_dir, row_config, models[model_name]), overwrite)['result']
      rows[f'{row}/{encoder_name}'] = dict(
          success_rate=result['success_rate'], success_ci=result['success_ci'],
          mean_final_distance=result['mean_final_distance'], world_model=models[model_name])
  table = dict(protocol=protocol, episodes=config.planning.num_episodes,
               objective=job_objective(config), rows=rows,
               seconds=time.perf_counter() - start)
  outputs.write_json(os.path.join(workdir, 'ablation.json'), table)
  print(format_ablation(table), flush=True)
  return table


def _ablation_world_model(config, workdir: str, data_dir: str, encoder_name: str,
                          model_name: str, overwrite: bool) -> str:
  """The world-model export of one ablation cell ('trained' / 'random_encoder' x 'proprio' /
  'no_proprio'): the main job's own where it is that cell, else trained here."""
  end_to_end = is_end_to_end(config)
  section = layout.model_stage(config.method)
  main_dim = config[section].proprio_emb_dim
  proprio_dim = (main_dim or config.world_model.proprio_emb_dim) if model_name == 'proprio' else 0
  if encoder_name == 'trained' and proprio_dim == main_dim:
    return os.path.join(workdir, layout.world_model_export(config.method))
  model_config = config.copy_and_resolve_references()
  model_config[section].proprio_emb_dim = proprio_dim
  stage_dir = os.path.join(workdir, 'ablation', encoder_name, model_name)
  encoder_path, extra_settings = None, {}
  if end_to_end:
    model_config.lewm.train_encoder = encoder_name == 'trained'
  else:
    encoder_path = os.path.join(workdir, layout.ENCODER_EXPORT)
    if encoder_name == 'random_encoder':
      encoder_path = os.path.join(workdir, 'ablation', 'random_encoder', 'encoder')
      if not os.path.isdir(encoder_path):
        pretrain_train.export_random_encoder(config, encoder_path, data_dir)
    extra_settings = {'encoder_path': encoder_path}
  run_stages(model_config, {section: stage_dir}, overwrite, data_dir=data_dir,
             encoder_path=encoder_path, extra_settings=extra_settings)
  return os.path.join(stage_dir, 'model')


def format_ablation(table: dict) -> str:
  """The ablation table: one line per row, trained vs random-init encoder side by side."""
  lines = ['', f"ablation ({table['objective']}, {table['episodes']} episodes, protocol "
           f"{table['protocol']}; success with 95 % interval, mean final distance)",
           f"{'row':<20} {'trained encoder':<34} random-init encoder"]
  for row in ABLATION_ROWS:
    cells = []
    for encoder in ('trained', 'random_encoder'):
      r = table['rows'][f'{row}/{encoder}']
      cells.append(f"{_pct(r['success_rate'], r['success_ci'])}, {r['mean_final_distance']:.2f}")
    lines.append(f'{row:<20} {cells[0]:<34} {cells[1]}')
  return '\n'.join(lines)


# ----------------------------------------------------------------------------- seeds


def summarise_seeds(runs: list) -> dict:
  """Mean success over training seeds with a t-based 95 % interval, for every planning row."""
  rows = {'main': [r['success_rate'] for r in runs]}
  for name in runs[0]['rows']:
    rows[name] = [r['rows'][name]['success_rate'] for r in runs]
  return dict(
      env=runs[0]['env'], variant=runs[0]['variant'], seeds=[r['seed'] for r in runs],
      success_rate=confidence.seed_interval(rows['main']).as_dict(),
      rows={name: confidence.seed_interval(rates).as_dict() for name, rates in rows.items()},
      per_seed=runs, total_time_s=sum(r['total_time_s'] for r in runs))


def format_seeds(summary: dict) -> str:
  lines = ['', f"over training seeds {summary['seeds']} (mean, t-based 95 % interval):"]
  for name, ci in summary['rows'].items():
    lines.append(f"  {name:<16} {_pct(ci['rate'], ci)}")
  return '\n'.join(lines)


def summarise(config, stages: dict) -> dict:
  """The job's headline numbers: encoder measures (trained vs random init), rollout error vs
  the constant-latent baseline, success of every planning row with its 95 % interval next to
  the random policy on the same episodes, latency, stage times, provenance."""
  world_model = stages[layout.model_stage(config.method)]['result']
  planning = stages['planning']['result']
  stage_seconds = {name: stage['seconds'] for name, stage in stages.items()}
  rows = planning.get('rows', {})
  # Encoder measures: stage 1's, or LeWM's (it measures its encoder after training); none for a
  # converted encoder.
  measured = stages.get('pretrain', stages[layout.model_stage(config.method)])['result']
  summary = dict(
      env=config.env,
      variant=config.get('variant', ''),
      seed=config.seed,
      method=config.method,
      objective=job_objective(config),
      labeled_fraction=float(config.get('labeled_fraction', 1.0)),
      # The inverse model's report when the unlabelled trajectories were pseudo-labelled.
      pseudo_labels=world_model.get('pseudo_labels'),
      encoder={k: v for k, v in measured.items() if isinstance(v, (int, float))
               and k.startswith(('geometry_', 'probe_error', 'latent_distance_spearman'))},
      rollout_error=world_model['rollout_error']['visual_mean'],
      rollout_error_constant_baseline=world_model['constant_baseline']['visual_mean'],
      rollout_error_normalised=world_model.get('rollout_error_normalised'),
      beats_constant_every_step=world_model.get('beats_constant_every_step'),
      success_rate=planning['success_rate'],
      success_ci=planning['success_ci'],
      random_policy_success_rate=planning['random_policy_success_rate'],
      mean_final_distance=planning['mean_final_distance'],
      random_policy_mean_final_distance=planning['random_policy_mean_final_distance'],
      distance_unit=planning['distance_unit'],
      episodes=planning['episodes'],
      episode_set=planning['episode_set'],
      protocol=planning['protocol'],
      planner_settings=planning['planner_settings'],
      rows={name: dict(success_rate=row['success_rate'], success_ci=row['success_ci'],
                       mean_final_distance=row['mean_final_distance'],
                       protocol=row['protocol']) for name, row in rows.items()},
      plan_latency_s=planning['plan_latency_median_s'],
      stage_seconds=stage_seconds,
      total_time_s=sum(stage_seconds.values()),
      provenance=provenance.describe_run(),
  )
  if uses_proprio(config):
    if 'pixels_only' in rows:
      summary['pixels_only_success_rate'] = rows['pixels_only']['success_rate']
  else:  # the model reads no proprio: every row is pixels only
    summary['pixels_only_success_rate'] = planning['success_rate']
  return summary


def job_objective(config) -> str:
  """What trained the encoder: 'lewm', stage 1's objective, or 'export' (converted, frozen)."""
  if is_end_to_end(config):
    return 'lewm'
  return config.pretrain.objective if config.encoder_source == 'pretrain' else 'export'


def uses_proprio(config) -> bool:
  """Whether the job's world model reads proprioception."""
  return config[layout.model_stage(config.method)].proprio_emb_dim > 0


def _pct(rate: float, ci: Optional[dict] = None) -> str:
  text = f'{rate:.1%}'
  return text if ci is None else f"{text} [{ci['low']:.1%}, {ci['high']:.1%}]"


def _action_labels(summary: dict) -> str:
  text = f"{summary['labeled_fraction']:.0%} of the training trajectories"
  pseudo = summary.get('pseudo_labels')
  if pseudo:
    text += (f"; {pseudo['pseudo_labelled_trajectories']} more pseudo-labelled (inverse model "
             f"on {pseudo['inverse_model_inputs']}, validation R^2 "
             f"{pseudo['inverse_model_validation_r2']:.2f})")
  return text


def format_summary(summary: dict) -> str:
  """The human-readable table printed at the end of the main job."""
  encoder = summary['encoder']
  unit = summary['distance_unit']
  rows = [
      # Position probes read in the env's unit; the angle probe is relative (1 = the mean's error).
      *((f'encoder: {k}' + (f' ({unit})' if 'probe_error' in k and 'angle' not in k else ''),
         f'{encoder[k]:.3g}   (random init {encoder[k + "_random_encoder"]:.3g})')
        for k in sorted(encoder) if k + '_random_encoder' in encoder),
      ('action labels', _action_labels(summary)),
      ('rollout latent error', f"{summary['rollout_error']:.4g}"
       f"   (constant latent {summary['rollout_error_constant_baseline']:.4g})"),
      (f"{summary['env']} success ({summary['episodes']} {summary['episode_set']} episodes)",
       f"{_pct(summary['success_rate'], summary['success_ci'])}"
       f"   (random policy {_pct(summary['random_policy_success_rate'])})"),
      *((f'  row {name}', _pct(row['success_rate'], row['success_ci']))
        for name, row in summary['rows'].items()),
      (f'mean final distance ({unit})', f"{summary['mean_final_distance']:.2f}"
       f"   (random policy {summary['random_policy_mean_final_distance']:.2f})"),
      ('plan latency (s)', f"{summary['plan_latency_s']:.3f}"),
      ('stage times (s)', ', '.join(f'{k} {v:.0f}' for k, v in summary['stage_seconds'].items())),
      ('total time (s)', f"{summary['total_time_s']:.1f}"),
  ]
  width = max(len(name) for name, _ in rows)
  return '\n'.join(['', 'jepa_jax pipeline summary', '-' * (width + 40)] +
                   [f'{name:<{width}}  {value}' for name, value in rows])
