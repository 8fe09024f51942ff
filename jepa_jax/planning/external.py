"""Plan with a world model in any `gymnasium.Env`: the MPC loop of `mpc.py`, stepping a Python
environment instead of a JAX one.

  results = run_external(load_world_model(path), env, episodes, planning_config, image_size=64)

Per episode: `env.reset(seed=..., options=...)`, the goal's frame (and proprio) encoded once,
then `episode_steps / (num_execute * frameskip)` plans, each made from the current observation by
the same jitted planner step as the built-in evaluation (`mpc.plan_once`, one compile per plan
horizon) and executed for `num_execute * frameskip` env steps (the model actions de-normalised by
the world model, `frameskip` env actions each). Success is read after the last step. The random
policy runs on the same episodes (reset again), its actions drawn as in `mpc.run_episode`; each
episode's planner key is `evaluate.episode_keys(seed, E)[i]`, so on our own environments
(`jepa_jax.envs.gym`) the plans equal those of the jitted evaluation of the same episodes.

What the loop reads from the environment, each replaceable by a function:
  frame_fn(env, obs) -> uint8 (H, W, 3)   default: obs['pixels'], else obs when it is an image,
                                          else env.render()
  proprio_fn(obs) -> f32 (P,) | None      default: obs['proprio'] when obs is a dict with it
  success_fn(env, obs, info) -> bool      default: info['is_success'] (else info['success'])
  distance_fn(env, obs, info) -> float    default: info['distance'], else NaN
Frames are resized to `image_size` (the world model's dataset frame size) as the importers and
environments resize them (`data.importers.frames`). Goals are frames: an episode's `goal_frame`
(and `goal_proprio`), else the reset's info['goal'] (and info['goal_proprio']), the convention
of stable-worldmodel's environments and of ours.

Results: the dict of `evaluate.evaluate` (success with its Wilson interval, the random policy,
final distances, planner settings, protocol), written as results.json with GIFs of the observed
frames beside the goal when a workdir is given.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jepa_jax import console, outputs, provenance
from jepa_jax.data.importers import frames as frames_lib
from jepa_jax.planning import agent as agent_lib
from jepa_jax.planning import evaluate, mpc, visualize
from jepa_jax.planning.config import PlanningConfig, as_planning_config


@dataclasses.dataclass(frozen=True)
class ExternalEpisode:
  """How to start one episode: `env.reset(seed=seed, options=options)`, and its goal (a frame
  uint8 (H, W, 3) and proprio (P,); None: read from the reset's info, see the module
  docstring)."""
  seed: Optional[int] = None
  options: Optional[dict] = None
  goal_frame: Optional[np.ndarray] = None
  goal_proprio: Optional[np.ndarray] = None


def frame_from_observation(env, obs) -> np.ndarray:
  if isinstance(obs, dict) and 'pixels' in obs:
    return np.asarray(obs['pixels'])
  if isinstance(obs, np.ndarray) and obs.ndim == 3 and obs.shape[-1] == 3:
    return obs
  return np.asarray(env.render())


def proprio_from_observation(obs) -> Optional[np.ndarray]:
  if isinstance(obs, dict) and 'proprio' in obs:
    return np.asarray(obs['proprio'], np.float32)
  return None


def success_from_info(env, obs, info) -> bool:
  del env, obs
  for key in ('is_success', 'success'):
    if key in info:
      return bool(info[key])
  raise ValueError(f"the environment's info has no 'is_success' or 'success' (keys "
                   f'{sorted(info)}); pass success_fn=')


def distance_from_info(env, obs, info) -> float:
  del env, obs
  return float(info.get('distance', np.nan))


class _Proprio:
  """What `agent_lib.world_model_agent` reads the proprio through (`env.proprio(state)`): here
  the 'state' handed to the agent is the observed proprio itself."""
  proprio = staticmethod(lambda proprio: proprio)


def _resolve_steps(planning: PlanningConfig, env, episode_steps: Optional[int]) -> int:
  steps = episode_steps or planning.episode_steps or getattr(env.spec, 'max_episode_steps', None)
  if not steps:
    raise ValueError('the episode length is unknown: pass episode_steps= (or set '
                     'planning.episode_steps, or register the env with max_episode_steps)')
  return int(steps)


def run_external(world_model, env, episodes: Sequence[ExternalEpisode],
                 planning: Any, *, image_size: int, seed: int = 0,
                 episode_steps: Optional[int] = None, workdir: Optional[str] = None,
                 frame_fn: Callable = frame_from_observation,
                 proprio_fn: Callable = proprio_from_observation,
                 success_fn: Callable = success_from_info,
                 distance_fn: Callable = distance_from_info, distance_unit: str = '',
                 env_name: Optional[str] = None) -> dict:
  """Runs the MPC loop of `planning` on `episodes` of the gymnasium env `env`.

  Args:
    world_model: `(model, params)` of `world_model.model.load_world_model`, or the path of an
      exported world model.
    env: a `gymnasium.Env` whose actions are the world model's env actions.
    episodes: how each episode starts and what its goal is.
    planning: the planner and protocol (horizon, num_execute, warm_start, ...): a
      PlanningConfig or a config's `planning` section (ConfigDict or dict).
    image_size: frame size of the world model's training data.
    seed: planner keys (`evaluate.episode_keys(seed, E)`).
    episode_steps: env steps per episode (default planning.episode_steps, else the env spec's
      max_episode_steps); a multiple of num_execute * frameskip.
    workdir: when given, results.json and gifs/episode_<i>.gif are written there.
    env_name: the name reported (default the env spec's id).
  Returns:
    the results dict of `evaluate.evaluate` ('episode_set': 'external') plus 'gifs' and
    'provenance' when written.
  """
  if isinstance(world_model, (str, os.PathLike)):
    from jepa_jax.world_model import model as world_model_lib  # pylint: disable=g-import-not-at-top
    world_model = world_model_lib.load_world_model(os.fspath(world_model))
  model, params = world_model
  planning = as_planning_config(planning)
  if not episodes:
    raise ValueError('no episodes to run')
  agent = agent_lib.world_model_agent(model, params, planning.objective, _Proprio,
                                      image_size=image_size, chunk_size=planning.cost_chunk_size)
  steps = _resolve_steps(planning, env, episode_steps)
  config = dataclasses.replace(planning, episode_steps=steps)
  horizons = mpc.plan_horizons(config, None, agent.frameskip)   # checks the episode length
  execute_env = config.num_execute * agent.frameskip

  @jax.jit
  def encode(params, frame, proprio):
    return agent.encode(params, frame, proprio)

  @functools.partial(jax.jit, static_argnums=5)
  def plan(params, latent, goal_latent, key, previous, horizon):
    actions, cost, failed = mpc.plan_once(config, agent, params, latent, goal_latent, key,
                                          previous, horizon)
    return actions, agent.to_env_actions(actions), cost, failed

  random_actions = jax.jit(lambda key: agent.to_env_actions(mpc.random_policy_actions(
      config, agent, key, steps // agent.frameskip)))

  def observe(obs, what):
    frame = frames_lib.resize_frames(frame_fn(env, obs), image_size, f'{what} frame')
    proprio = proprio_fn(obs)
    if model.use_proprio and proprio is None:
      raise ValueError(f'the world model reads proprio but the {what} observation has none; '
                       'pass proprio_fn=')
    return frame, jnp.asarray(np.zeros(0) if proprio is None else proprio, jnp.float32)

  def run_episode(episode: ExternalEpisode, key: jax.Array, keep_frames: bool) -> dict:
    """One episode with the planner, then with the random policy; the outcome of each."""
    k_plan, k_rand = jax.random.split(key)
    obs, info = env.reset(seed=episode.seed, options=episode.options)
    goal_frame, goal_proprio = _goal(episode, info, image_size)
    if model.use_proprio and not goal_proprio.size:
      raise ValueError('the world model reads proprio but the goal has none: give the episode '
                       "a goal_proprio, or return info['goal_proprio'] from reset")
    goal_latent = encode(params, goal_frame, goal_proprio)
    previous = jnp.zeros((config.horizon, agent.action_dim), jnp.float32)
    frames, failed = [frame_fn(env, obs)] if keep_frames else [], False
    for j, horizon in enumerate(horizons):
      latent = encode(params, *observe(obs, 'current'))
      actions, env_actions, _, plan_failed = plan(
          params, latent, goal_latent, jax.random.fold_in(k_plan, j), previous, horizon)
      previous = jnp.pad(actions, ((0, config.horizon - horizon), (0, 0)))
      failed |= bool(plan_failed)
      for action in np.asarray(env_actions)[:execute_env]:
        obs, _, _, _, info = env.step(action)
        if keep_frames:
          frames.append(frame_fn(env, obs))
    outcome = dict(success=success_fn(env, obs, info) and not failed,
                   final_distance=distance_fn(env, obs, info), planner_failed=failed)
    obs, info = env.reset(seed=episode.seed, options=episode.options)
    for action in np.asarray(random_actions(k_rand)):
      obs, _, _, _, info = env.step(action)
    outcome.update(random_success=success_fn(env, obs, info),
                   random_final_distance=distance_fn(env, obs, info))
    if keep_frames:
      outcome.update(frames=frames_lib.resize_frames(np.stack(frames), visualize.FRAME_SIZE),
                     goal=frames_lib.resize_frames(goal_frame, visualize.FRAME_SIZE))
    return outcome

  keys = np.asarray(evaluate.episode_keys(seed, len(episodes)))
  num_gifs = planning.num_gifs if workdir else 0
  outcomes = []
  start_time = time.perf_counter()
  with console.Progress(len(episodes), f'planning ({env_name or _env_id(env)})',
                        unit='episode') as progress:
    for i, episode in enumerate(episodes):
      outcomes.append(run_episode(episode, keys[i], keep_frames=i < num_gifs))
      progress.update(1)
  data = {k: np.asarray([o[k] for o in outcomes]) for k in (
      'success', 'final_distance', 'planner_failed', 'random_success', 'random_final_distance')}
  results = evaluate.summarise(
      data, config, agent.frameskip, env_name=env_name or _env_id(env),
      distance_unit=distance_unit, episode_info=dict(episode_set='external',
                                                     num_episodes=len(episodes)),
      seed=seed, devices=1, eval_wall_s=time.perf_counter() - start_time)
  results['episode_set'] = 'external'
  if workdir:
    os.makedirs(workdir, exist_ok=True)
    shown = outcomes[:num_gifs]
    gifs = visualize.save_observed_gifs(os.path.join(workdir, 'gifs'),
                                        [o['frames'] for o in shown], [o['goal'] for o in shown],
                                        num_gifs)
    results.update(gifs=gifs, provenance=provenance.describe_run())
    outputs.write_json(os.path.join(workdir, 'results.json'), results)
  return results


def _env_id(env) -> str:
  return env.spec.id if env.spec is not None else type(env.unwrapped).__name__


def _goal(episode: ExternalEpisode, info: dict, image_size: int):
  """(goal frame uint8 (S, S, 3), goal proprio (P,) or (0,)) of an episode."""
  frame = episode.goal_frame if episode.goal_frame is not None else info.get('goal')
  if frame is None:
    raise ValueError("no goal frame: give the episode a goal_frame, or return info['goal'] from "
                     'reset')
  proprio = episode.goal_proprio if episode.goal_proprio is not None else info.get(
      'goal_proprio')
  frame = frames_lib.resize_frames(np.asarray(frame), image_size, 'goal frame')
  return frame, jnp.zeros((0,), jnp.float32) if proprio is None else jnp.asarray(
      proprio, jnp.float32)
