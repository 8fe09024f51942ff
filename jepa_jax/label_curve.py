"""The label-efficiency curve: planning success against the fraction of training trajectories
with action labels (`config.labeled_fraction`), for the three-stage pipeline, its random-init
encoder (the floor) and LeWM, on the same episodes and protocol rows.

  python -m experiments.run_pipeline --config=experiments/configs/wall.py:tiny \\
      --workdir=DIR --label_curve=1,0.25,0.1

Stage 1 reads frames only, so it trains once for every fraction; stage 2 (on stage 1's encoder
and on its random init) and LeWM train on the first fraction of the training trajectories
(`data.pipeline.labeled_trajectories`). Each model and each planning run is a resumable,
config-aware stage of the main job (`main_job.run_stages`), so a rerun skips what finished.
The curve runs both methods whatever `config.method` says.

Layout of `workdir` (a main job's directory):
  data/, pretrain/                                  as in the three_stage main job
  labels/random_encoder/encoder/                    stage 1's random init
  labels/<f>/three_stage/{world_model,planning}/    stage 2 on stage 1's encoder, stage 3
  labels/<f>/random_encoder/{world_model,planning}/ stage 2 on the random init, stage 3
  labels/<f>/lewm/{lewm,planning}/                  LeWM, stage 3
  label_curve.json, label_curve.png
A cell that the main job in `workdir` already trained (its world_model/ or lewm/ finished with
the cell's settings: `run_pipeline --config.method=three_stage` is the three_stage cell at
fraction 1) is read from the main job's folders instead of being trained again; so is its
planning, unless planning/ finished with other settings.
"""

import math
import os
import time
from typing import Sequence

from jepa_jax import console, layout, main_job, outputs
from jepa_jax.data import pipeline
from jepa_jax.planning import confidence
from jepa_jax.pretrain import train as pretrain_train

# The models of every fraction: name -> (method, display name). 'random_encoder' is stage 2 on
# stage 1's random init: what the labels buy without a trained encoder.
CELLS = {
    'three_stage': ('three_stage', 'three_stage'),
    'random_encoder': ('three_stage', 'three_stage, random-init encoder'),
    'lewm': ('lewm', 'LeWM'),
}
FLOOR = 'random_encoder'


def parse_fractions(values: Sequence) -> tuple[float, ...]:
  """The fractions of `--label_curve` (strings or numbers), each in (0, 1] and given once."""
  if not values:
    raise ValueError('--label_curve is empty; give the labelled fractions to train on, e.g. '
                     '--label_curve=1,0.25,0.1')
  fractions = []
  for value in values:
    try:
      fraction = float(value)
    except (TypeError, ValueError):
      raise ValueError(f'--label_curve: {value!r} is not a number; give fractions in (0, 1], '
                       'e.g. --label_curve=1,0.25,0.1') from None
    if not 0.0 < fraction <= 1.0:  # NaN fails too
      raise ValueError(f'--label_curve: fraction {value} is not in (0, 1]; each is the share of '
                       'training trajectories with action labels, e.g. --label_curve=1,0.25,0.1')
    if fraction in fractions:
      raise ValueError(f'--label_curve lists fraction {fraction:g} twice; give each once')
    fractions.append(fraction)
  return tuple(fractions)


def fraction_key(fraction: float) -> str:
  """The folder and JSON key of a fraction: '1', '0.25', '0.1'."""
  return f'{fraction:.15g}'


def cell_config(config, cell: str, fraction: float):
  """`config` as the main job of `cell` at `fraction` of the labels would run it."""
  cell_cfg = config.copy_and_resolve_references()
  cell_cfg.method = CELLS[cell][0]
  cell_cfg.labeled_fraction = fraction
  return cell_cfg


def check(config, fractions: Sequence[float]) -> None:
  """Builds and checks every cell's config (one line) before any work."""
  if config.encoder_source != 'pretrain':
    raise ValueError('--label_curve compares stage 1\'s encoder with its random init; this config '
                     'plans on a frozen converted encoder (encoder_source=export): use a variant '
                     'that trains stage 1 (e.g. :tiny, :paper_vjepa)')
  if float(config.labeled_fraction) != 1.0:
    raise ValueError(f'--label_curve sets labeled_fraction for each cell; drop '
                     f'--config.labeled_fraction={config.labeled_fraction}')
  by_count = {}
  for fraction in fractions:
    for cell in CELLS:
      main_job.check_config(cell_config(config, cell, fraction))
    count = pipeline.labeled_trajectories(cell_config(config, 'lewm', fraction))
    if count in by_count:
      raise ValueError(f'--label_curve fractions {by_count[count]:g} and {fraction:g} both label '
                       f'{count} training trajectories (the same run); drop one')
    by_count[count] = fraction


def run(config, workdir: str, fractions: Sequence, *, overwrite: bool = False) -> dict:
  """Trains and plans every cell (resuming / skipping finished ones), writes
  `workdir/label_curve.json` and `label_curve.png`, prints the table; returns the json's dict.

  fractions: labelled fractions in (0, 1] (strings, e.g. from the flag, or numbers).
  """
  fractions = parse_fractions(fractions)
  check(config, fractions)
  workdir = outputs.prepare_output_dir(workdir, kind='main_job')
  with outputs.WorkdirLock(workdir):
    return _run_locked(config, workdir, fractions, overwrite)


def _run_locked(config, workdir: str, fractions: tuple, overwrite: bool) -> dict:
  start = time.perf_counter()
  base = cell_config(config, 'three_stage', 1.0)
  data_dir = os.path.join(workdir, 'data')
  stage1 = os.path.join(workdir, 'pretrain')
  main_job.run_stages(base, {'data': data_dir, 'pretrain': stage1}, overwrite, data_dir=data_dir)
  random_dir = os.path.join(workdir, 'labels', 'random_encoder')
  random_encoder = os.path.join(random_dir, 'encoder')
  main_job.run_stage(random_dir, 'random_encoder', main_job.stage_settings(base, 'pretrain'),
                     lambda: _export_random_encoder(base, random_encoder, data_dir), overwrite)
  encoders = {'three_stage': os.path.join(workdir, layout.ENCODER_EXPORT),
              'random_encoder': random_encoder, 'lewm': None}
  cells = {}
  for fraction in fractions:
    cells[fraction_key(fraction)] = {}
    for cell in CELLS:
      cfg = cell_config(config, cell, fraction)
      # The random-init encoder is an input the config does not name: its stages record it.
      extra = {'encoder_path': random_encoder} if cell == FLOOR else {}
      dirs = _cell_dirs(workdir, cell, fraction, cfg, extra)
      stages = main_job.run_stages(cfg, dirs, overwrite, data_dir=data_dir,
                                   encoder_path=encoders[cell], extra_settings=extra)
      cells[fraction_key(fraction)][cell] = _cell_entry(cfg, stages, dirs)
  first_rows = cells[fraction_key(fractions[0])]['three_stage']['rows']
  curve = dict(
      env=config.env, variant=config.get('variant', ''), seed=config.seed,
      episodes=first_rows['main']['episodes'], episode_set=first_rows['main']['episode_set'],
      num_train_trajectories=int(config.data.num_train_trajectories),
      fractions=list(fractions), rows=list(first_rows),
      cell_names={cell: name for cell, (_, name) in CELLS.items()}, floor=FLOOR, cells=cells,
      seconds=time.perf_counter() - start)
  json_path = outputs.write_json(os.path.join(workdir, 'label_curve.json'), curve)
  png_path = plot(os.path.join(workdir, 'label_curve.png'), curve)
  print(format_curve(curve), flush=True)
  console.result('label-efficiency curve', f'{json_path}, {png_path}')
  return curve


def _export_random_encoder(config, path: str, data_dir: str) -> dict:
  pretrain_train.export_random_encoder(config, path, data_dir)
  return {'encoder_path': path}


def _cell_dirs(workdir: str, cell: str, fraction: float, cfg, extra: dict) -> dict:
  """{model stage: folder, 'planning': folder} of one cell: the main job's own when it trained
  this cell (module docstring), else under labels/<f>/<cell>/."""
  model_stage = layout.model_stage(cfg.method)
  own = os.path.join(workdir, 'labels', fraction_key(fraction), cell)
  dirs = {model_stage: os.path.join(own, model_stage), 'planning': os.path.join(own, 'planning')}
  main_model, main_planning = os.path.join(workdir, model_stage), os.path.join(workdir, 'planning')
  settings = lambda stage: {**main_job.stage_settings(cfg, stage), **extra}
  if main_job.finished_with(main_model, settings(model_stage)):
    dirs[model_stage] = main_model
    if (not os.path.exists(os.path.join(main_planning, 'stage_done.json'))
        or main_job.finished_with(main_planning, settings('planning'))):
      dirs['planning'] = main_planning
  return dirs


def _cell_entry(cfg, stages: dict, dirs: dict) -> dict:
  """One cell of label_curve.json: every planning row's success with its 95 % interval, the
  model's rollout error against the constant latent, the labelled trajectory count and the
  pseudo labels' report."""
  model_stage = layout.model_stage(cfg.method)
  model, planning = stages[model_stage]['result'], stages['planning']['result']
  rows = {'main': planning, **planning.get('rows', {})}
  return dict(
      labeled_fraction=float(cfg.labeled_fraction),
      labeled_trajectories=model['labeled_trajectories'],
      # The inverse model's report when the other trajectories were pseudo-labelled, else None.
      pseudo_labels=model.get('pseudo_labels'),
      rollout_error=model.get('rollout_error', {}).get('visual_mean'),
      rollout_error_constant_baseline=model.get('constant_baseline', {}).get('visual_mean'),
      rows={name: dict(
          success_rate=row['success_rate'], success_ci=row['success_ci'],
          successes=round(row['success_rate'] * row['episodes']), episodes=row['episodes'],
          episode_set=row['episode_set'], open_loop=row['protocol']['open_loop'],
          mean_final_distance=row['mean_final_distance'],
          random_policy_success_rate=row['random_policy_success_rate'])
            for name, row in rows.items()},
      distance_unit=planning['distance_unit'],
      world_model=os.path.join(dirs[model_stage], 'model'), planning_dir=dirs['planning'])


# ----------------------------------------------------------------------------- report


def _row_title(curve: dict, row: str) -> str:
  first = curve['cells'][fraction_key(curve['fractions'][0])]['three_stage']['rows'][row]
  return f"{row} ({'open loop' if first['open_loop'] else 'MPC'})"


def _rate(row: dict) -> str:
  return confidence.format_rate(confidence.RateInterval(**row['success_ci']))


def format_curve(curve: dict) -> str:
  """The table: one line per fraction and model, success (95 % interval) of every planning
  row, mean final distance of the main row, rollout error (constant latent)."""
  rows = curve['rows']
  unit = curve['cells'][fraction_key(curve['fractions'][0])]['three_stage']['distance_unit']
  lines = ['', f"label-efficiency curve ({curve['env']}, {curve['episodes']} {curve['episode_set']}"
           f" episodes, seed {curve['seed']}; success with 95 % interval)",
           f"{'labels':<14} {'model':<60}" + ''.join(f' {_row_title(curve, r):<24}' for r in rows)
           + f" {'final distance (' + unit + ')':<22} rollout error (constant latent)"]
  for fraction in sorted(curve['fractions'], reverse=True):
    for i, (cell, name) in enumerate(curve['cell_names'].items()):
      entry = curve['cells'][fraction_key(fraction)][cell]
      labels = f"{100 * fraction:g} % ({entry['labeled_trajectories']})" if i == 0 else ''
      error = ('' if entry['rollout_error'] is None else
               f"{entry['rollout_error']:.3g} ({entry['rollout_error_constant_baseline']:.3g})")
      if entry.get('pseudo_labels'):
        name += f" + pseudo labels (R^2 {entry['pseudo_labels']['inverse_model_validation_r2']:.2f})"
      lines.append(f'{labels:<14} {name:<60}' + ''.join(
          f" {_rate(entry['rows'][r]):<24}" for r in rows)
          + f" {entry['rows']['main']['mean_final_distance']:<22.2f} {error}")
  return '\n'.join(lines)


def plot(path: str, curve: dict) -> str:
  """Writes the PNG atomically: one panel per planning row, success against the labelled
  fraction (log x), one line per model with its 95 % interval as error bars, the random-init
  floor dashed, the random policy dotted."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  from matplotlib import ticker  # pylint: disable=g-import-not-at-top

  fractions = sorted(curve['fractions'])
  rows = curve['rows']
  fig, axes = plt.subplots(1, len(rows), figsize=(5.5 * len(rows), 4.5), squeeze=False)
  for ax, row in zip(axes[0], rows):
    for i, (cell, name) in enumerate(curve['cell_names'].items()):
      entries = [curve['cells'][fraction_key(f)][cell]['rows'][row] for f in fractions]
      rates = [e['success_rate'] for e in entries]
      errors = [[r - e['success_ci']['low'] for r, e in zip(rates, entries)],
                [e['success_ci']['high'] - r for r, e in zip(rates, entries)]]
      # Side by side (a few % apart on the log axis) so that the intervals do not overlap.
      xs = [f * math.exp(0.04 * (i - 1)) for f in fractions]
      ax.errorbar(xs, rates, yerr=errors, marker='o', capsize=3, label=name,
                  linestyle='--' if cell == curve['floor'] else '-')
    random_policy = [curve['cells'][fraction_key(f)]['three_stage']['rows'][row]
                     ['random_policy_success_rate'] for f in fractions]
    ax.plot(fractions, random_policy, ':', color='grey', label='random policy')
    ax.set_xscale('log')
    ax.xaxis.set_major_locator(ticker.FixedLocator(fractions))
    ax.xaxis.set_major_formatter(ticker.FixedFormatter([f'{100 * f:g} %' for f in fractions]))
    ax.xaxis.set_minor_locator(ticker.NullLocator())
    ax.set_xlim(fractions[0] * 0.8, fractions[-1] * 1.25)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel('training trajectories with action labels')
    ax.set_ylabel(f"success ({curve['episodes']} episodes, 95 % interval)")
    ax.set_title(_row_title(curve, row))
    ax.grid(alpha=0.3)
  axes[0][0].legend(loc='best', fontsize='small')
  pseudo = any(entry.get('pseudo_labels') for cells in curve['cells'].values()
               for entry in cells.values())
  fig.suptitle(f"{curve['env']}: label efficiency"
               + (' (the unlabelled trajectories pseudo-labelled)' if pseudo else ''))
  fig.tight_layout()
  try:
    return outputs.write_atomically(path, lambda tmp: fig.savefig(tmp, format='png', dpi=100))
  finally:
    plt.close(fig)
