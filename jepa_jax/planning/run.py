"""Stage 3 entry point: load the exported world model (or the oracle), run the evaluation
protocol of `config.planning` and every extra row of `config.planning_extra` on the same
episodes, write `results.json`, a plot and episode GIFs into the workdir."""

import os
from typing import Optional, Sequence

from jepa_jax import envs, outputs, provenance, sharding
from jepa_jax.planning import agent as agent_lib
from jepa_jax.planning import evaluate, oracle, visualize
from jepa_jax.planning.config import as_planning_config


def planning_rows(config, extra_rows: Optional[Sequence[str]] = None) -> dict:
  """`{row name: PlanningConfig}`: 'main' is `config.planning`; each entry of
  `config.planning_extra` overrides some of its keys (validated here, before any work).
  extra_rows: only these entries of `planning_extra` (None: all of them)."""
  rows = {'main': as_planning_config(config.planning)}
  extra = config.get('planning_extra', {})
  extra = extra.to_dict() if hasattr(extra, 'to_dict') else dict(extra)
  unknown = sorted(set(extra_rows or ()) - set(extra))
  if unknown:
    raise ValueError(f'unknown planning rows {unknown}; the config has {sorted(extra)}')
  for name, overrides in extra.items():
    if extra_rows is None or name in extra_rows:
      rows[name] = as_planning_config(config.planning, **overrides)
  return rows


def load_model(config, world_model_path: Optional[str]):
  """`(model, params)` of the exported world model at `world_model_path`, checked against
  the config."""
  from jepa_jax.world_model import model as world_model_lib  # only the learned agent needs it
  if not world_model_path or not os.path.isdir(world_model_path):
    raise ValueError(f'no exported world model at {world_model_path}; train stage 2 first, pass '
                     '--world_model=PATH, or use --oracle')
  model, params = world_model_lib.load_world_model(world_model_path)
  if model.frameskip != config.data.frameskip:
    raise ValueError(f'world model frameskip {model.frameskip} != config.data.frameskip '
                     f'{config.data.frameskip}')
  return model, params


def reads_world_model(rows: dict, use_oracle: bool) -> bool:
  """Whether planning these `{name: PlanningConfig}` rows needs the exported world model: the
  learned agent does, and so does the oracle scored in its latent (`oracle_cost='latent'`)."""
  return not use_oracle or any(row.oracle_cost == 'latent' for row in rows.values())


def make_agent(config, env, planning, model_and_params, use_oracle: bool = False):
  """The learned agent of a loaded world model, or the oracle (which scores its plans with the
  world model's encoder when `planning.oracle_cost='latent'`)."""
  if use_oracle:
    latent = planning.oracle_cost == 'latent'
    return oracle.oracle_agent(env, config.data.frameskip, planning.oracle_action_scale,
                               planning.oracle_cost, config.data.image_size,
                               world_model=model_and_params if latent else None,
                               objective=planning.objective)
  model, params = model_and_params
  return agent_lib.world_model_agent(model, params, planning.objective, env,
                                     image_size=config.data.image_size,
                                     chunk_size=planning.cost_chunk_size)


def run_planning(workdir: str, config, world_model_path: Optional[str] = None, *,
                 use_oracle: bool = False,
                 extra_rows: Optional[Sequence[str]] = None) -> dict:
  """Evaluates the configured planner on `config.env` and writes the results.

  Args:
    workdir: output directory (created): results.json, results.png, gifs/episode_<i>.gif.
    config: the full experiment ConfigDict (`env`, `planning`, `planning_extra`,
      `data.frameskip`, `data.image_size`, `seed`, `mesh`).
    world_model_path: exported stage-2 model; with `use_oracle` only read by rows with
      `oracle_cost='latent'`.
    use_oracle: plan with the true dynamics instead of a learned model.
    extra_rows: only these rows of `planning_extra` (None: all).
  Returns:
    the results dict written to results.json: the main row's results (see
    `evaluate.evaluate`), 'rows' {name: results} for every extra row, 'agent',
    'world_model_path', 'plot', 'gifs', 'provenance'.
  """
  env = envs.get(config.env)
  rows = planning_rows(config, extra_rows)
  mesh = sharding.make_mesh(config.mesh.to_dict()) if 'mesh' in config else None
  os.makedirs(workdir, exist_ok=True)
  model_and_params = (load_model(config, world_model_path)
                      if reads_world_model(rows, use_oracle) else None)
  results, extra = None, {}
  for name, planning in rows.items():
    agent = make_agent(config, env, planning, model_and_params, use_oracle)
    row = evaluate.evaluate(env, agent, planning, config.seed, mesh=mesh,
                            measure_latency=name == 'main', return_episodes=name == 'main')
    if name != 'main':
      extra[name] = row
      continue
    results, data = row, row.pop('episode_data')
    results.update(
        plot=visualize.plot_results(os.path.join(workdir, 'results.png'), env, data),
        gifs=visualize.save_episode_gifs(os.path.join(workdir, 'gifs'), env, data,
                                         planning.num_gifs, agent.frameskip,
                                         planning.num_execute))
  results.update(rows=extra, agent='oracle' if use_oracle else 'world_model',
                 world_model_path=world_model_path if model_and_params else None,
                 provenance=provenance.describe_run())
  outputs.write_json(os.path.join(workdir, 'results.json'), results)
  return results
