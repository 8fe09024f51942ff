"""Stage 3 entry point: load the exported world model (or the oracle), run the Wall protocol,
write `results.json`, a plot and episode GIFs into the workdir."""

import json
import os
from typing import Optional

from jepa_jax import sharding
from jepa_jax.planning import evaluate, oracle, visualize


def default_world_model_path(workdir: str) -> str:
  """`<workdir>/../world_model/model`: where stage 2 of the main job exports its model."""
  return os.path.join(os.path.dirname(os.path.abspath(workdir)), 'world_model', 'model')


def run_planning(workdir: str, config, world_model_path: Optional[str] = None, *,
                 use_oracle: bool = False) -> dict:
  """Evaluates CEM (or the configured planner) MPC on Wall and writes the results.

  Args:
    workdir: output directory (created): results.json, results.png, gifs/episode_<i>.gif.
    config: the full experiment ConfigDict (`planning`, `data.frameskip`, `data.image_size`,
      `seed`, optional `mesh` axis sizes over which episodes are sharded).
    world_model_path: exported stage-2 model (default `default_world_model_path(workdir)`);
      ignored with `use_oracle`.
    use_oracle: plan with the true Wall dynamics instead of a learned model.
  Returns:
    the results dict written to results.json (see `evaluate.evaluate_wall`) plus 'agent',
    'world_model_path', 'plot' and 'gifs'.
  """
  planning = evaluate.PlanningConfig(**config.planning.to_dict())
  if use_oracle:
    agent = oracle.oracle_agent(frameskip=config.data.frameskip,
                                action_scale=planning.oracle_action_scale)
    world_model_path = None
  else:
    from jepa_jax.world_model import model as world_model_lib  # only the learned agent needs it
    world_model_path = world_model_path or default_world_model_path(workdir)
    if not os.path.isdir(world_model_path):
      raise ValueError(f'no exported world model at {world_model_path}; train stage 2 first, pass '
                       '--world_model=PATH, or use --oracle')
    model, params = world_model_lib.load_world_model(world_model_path)
    if model.frameskip != config.data.frameskip:
      raise ValueError(f'world model frameskip {model.frameskip} != config.data.frameskip '
                       f'{config.data.frameskip}')
    agent = evaluate.world_model_agent(model, params, planning.objective(),
                                       image_size=config.data.image_size)
  mesh = sharding.make_mesh(config.mesh.to_dict()) if 'mesh' in config else None
  results = evaluate.evaluate_wall(agent, planning, planning.num_episodes, config.seed,
                                   mesh=mesh, return_episodes=True)
  data = results.pop('episode_data')
  os.makedirs(workdir, exist_ok=True)
  results.update(
      agent='oracle' if use_oracle else 'world_model',
      world_model_path=world_model_path,
      plot=visualize.plot_results(os.path.join(workdir, 'results.png'), data),
      gifs=visualize.save_episode_gifs(os.path.join(workdir, 'gifs'), data, planning.num_gifs,
                                       agent.frameskip, planning.num_execute))
  with open(os.path.join(workdir, 'results.json'), 'w') as f:
    json.dump(results, f, indent=2)
  return results
