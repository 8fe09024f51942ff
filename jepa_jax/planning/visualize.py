"""Plots and GIFs of planning episodes of any environment (matplotlib Agg + imageio).

Inputs are the per-episode numpy arrays of `evaluate.evaluate(..., return_episodes=True)`
(`episode_data`): start/goal `(E, S)`, trajectory `(E, T + 1, S)`, planned `(E, P, L, S)`,
final_distance `(E,)`, success `(E,)`, random_final_distance `(E,)` (S = state_dim). Plots trace
the first two probe targets of each state (`env.probe_targets`, e.g. Wall's dot position).
"""

import os

import jax
import numpy as np

from jepa_jax.envs.base import Environment

PLAN_COLOUR = np.array([0, 90, 255], np.uint8)
GOAL_COLOUR = np.array([0, 170, 0], np.uint8)
FRAME_SIZE = 128


def _xy(env: Environment, states: np.ndarray) -> np.ndarray:
  """First two probe targets of `(..., S)` states -> `(..., 2)`."""
  flat = states.reshape(-1, states.shape[-1])
  xy = np.asarray(jax.vmap(env.probe_targets)(flat))[:, :2]
  return xy.reshape(states.shape[:-1] + (2,))


def plot_results(path: str, env: Environment, data: dict, max_trajectories: int = 20) -> str:
  """Writes a PNG: executed trajectories (green = success, red = failure, circle = start,
  star = goal) over a frame of the environment when it has a `plot_extent`, and histograms of
  planner vs random-policy final distances."""
  import matplotlib
  matplotlib.use('Agg')
  from matplotlib import pyplot as plt

  fig, (ax_map, ax_hist) = plt.subplots(1, 2, figsize=(11, 5))
  if env.plot_extent is not None:
    ax_map.imshow(np.asarray(env.render(data['goal'][0], FRAME_SIZE)), extent=env.plot_extent,
                  alpha=0.5)
  trajectories, starts, goals = (_xy(env, data[k]) for k in ('trajectory', 'start', 'goal'))
  for e in range(min(max_trajectories, len(starts))):
    colour = 'tab:green' if data['success'][e] else 'tab:red'
    ax_map.plot(trajectories[e, :, 0], trajectories[e, :, 1], '-', color=colour, lw=1)
    ax_map.plot(*starts[e], 'o', color=colour, ms=4)
    ax_map.plot(*goals[e], '*', color='k', ms=7)
  ax_map.set_title(f'{env.name}: executed trajectories (success {np.mean(data["success"]):.0%})')
  bins = np.linspace(0, max(float(np.max(data['random_final_distance'])), 1e-3), 30)
  ax_hist.hist(data['final_distance'], bins=bins, alpha=0.7, label='planner')
  ax_hist.hist(data['random_final_distance'], bins=bins, alpha=0.5, label='random policy')
  ax_hist.set_xlabel(f'final distance to goal ({env.distance_unit})')
  ax_hist.set_ylabel('episodes')
  ax_hist.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


def _mark(env: Environment, image: np.ndarray, states: np.ndarray, colour) -> np.ndarray:
  """Paints the pixels under the probe positions of `states (K, S)` on a rendered frame."""
  if env.plot_extent is None:
    return image
  left, right, bottom, top = env.plot_extent
  size = image.shape[0]
  xy = _xy(env, states)
  cols = np.clip(np.floor((xy[:, 0] - left) / (right - left) * size).astype(int), 0, size - 1)
  rows = np.clip(np.floor((xy[:, 1] - top) / (bottom - top) * size).astype(int), 0, size - 1)
  image[rows, cols] = colour
  return image


def episode_frames(env: Environment, data: dict, episode: int, frameskip: int,
                   num_execute: int) -> np.ndarray:
  """`(T + 1, F, 2F + 2, 3)` uint8 frames: left the observation with the active plan's
  true-dynamics path (blue) and the goal (green); right the goal image."""
  render = jax.jit(jax.vmap(lambda s: env.render(s, FRAME_SIZE)))
  observations = np.array(render(data['trajectory'][episode]))
  goal = data['goal'][episode][None]
  goal_image = np.asarray(render(goal))[0]
  per_plan = frameskip * num_execute
  planned = data['planned'][episode]
  marked = [_mark(env, _mark(env, obs, planned[min(t // per_plan, len(planned) - 1)],
                             PLAN_COLOUR), goal, GOAL_COLOUR)
            for t, obs in enumerate(observations)]
  return beside_goal(np.stack(marked), goal_image)


def beside_goal(observations: np.ndarray, goal_image: np.ndarray) -> np.ndarray:
  """uint8 `(T, S, S, 3)` observations and the `(S, S, 3)` goal -> `(T, S, 2S + 2, 3)` frames:
  the observation left, a grey bar, the goal right."""
  bar = np.full(observations.shape[:2] + (2, 3), 128, np.uint8)
  goal = np.broadcast_to(goal_image, observations.shape)
  return np.concatenate([observations, bar, goal], 2)


def _write_gifs(directory: str, episodes, fps: int) -> list:
  """Writes `episode_<i>.gif` of each frame stack `(T, H, W, 3)` in `episodes`; returns the
  paths."""
  import imageio.v2 as imageio

  os.makedirs(directory, exist_ok=True)
  paths = []
  for e, frames in enumerate(episodes):
    path = os.path.join(directory, f'episode_{e}.gif')
    imageio.mimsave(path, list(frames), duration=1.0 / fps, loop=0)
    paths.append(path)
  return paths


def save_episode_gifs(directory: str, env: Environment, data: dict, num_gifs: int,
                      frameskip: int, num_execute: int, fps: int = 6) -> list:
  """Writes `episode_<i>.gif` for the first `num_gifs` episodes; returns the paths."""
  return _write_gifs(directory, (episode_frames(env, data, e, frameskip, num_execute)
                                 for e in range(min(num_gifs, len(data['start'])))), fps)


def save_observed_gifs(directory: str, observations, goal_images, num_gifs: int,
                       fps: int = 6) -> list:
  """Writes `episode_<i>.gif` for the first `num_gifs` episodes of an environment we only see
  through its frames: observed uint8 `(T + 1, S, S, 3)` beside the goal `(S, S, 3)`."""
  return _write_gifs(directory, (beside_goal(np.asarray(observations[e]),
                                             np.asarray(goal_images[e]))
                                 for e in range(min(num_gifs, len(observations)))), fps)
