"""Plots and GIFs of Wall planning episodes (matplotlib Agg + imageio).

Inputs are the per-episode numpy arrays of `evaluate.evaluate_wall(..., return_episodes=True)`
(`episode_data`): start/goal `(E, 2)`, trajectory `(E, T + 1, 2)`, planned `(E, P, L, 2)`,
final_distance `(E,)`, success `(E,)`, random_final_distance `(E,)`. Positions are (x=column,
y=row) grid pixels of the 65 x 65 Wall map.
"""

import os

import jax
import numpy as np

from jepa_jax.envs import wall

PLAN_COLOUR = np.array([0, 90, 255], np.uint8)
GOAL_COLOUR = np.array([0, 170, 0], np.uint8)


def plot_results(path: str, data: dict, max_trajectories: int = 20) -> str:
  """Writes a PNG: executed trajectories on the Wall map (green = success, red = failure,
  circle = start, star = goal) and histograms of planner vs random-policy final distances."""
  import matplotlib
  matplotlib.use('Agg')
  from matplotlib import pyplot as plt

  fig, (ax_map, ax_hist) = plt.subplots(1, 2, figsize=(11, 5))
  # The wall map: any rendering with its dot (non-black pixels) whitened.
  rendered = np.asarray(wall.render(np.array(wall.DOOR_CENTRE, np.float32), wall.GRID_SIZE))
  background = np.where(rendered.any(-1, keepdims=True), 255, 0).astype(np.uint8)
  background = np.broadcast_to(background, rendered.shape)
  ax_map.imshow(background, extent=(-0.5, wall.GRID_SIZE - 0.5, wall.GRID_SIZE - 0.5, -0.5))
  for e in range(min(max_trajectories, len(data['start']))):
    colour = 'tab:green' if data['success'][e] else 'tab:red'
    traj = data['trajectory'][e]
    ax_map.plot(traj[:, 0], traj[:, 1], '-', color=colour, lw=1)
    ax_map.plot(*data['start'][e], 'o', color=colour, ms=4)
    ax_map.plot(*data['goal'][e], '*', color='k', ms=7)
  ax_map.set_title(f'executed trajectories (success {np.mean(data["success"]):.0%})')
  bins = np.linspace(0, max(float(np.max(data['random_final_distance'])), 5.0), 30)
  ax_hist.hist(data['final_distance'], bins=bins, alpha=0.7, label='planner')
  ax_hist.hist(data['random_final_distance'], bins=bins, alpha=0.5, label='random policy')
  ax_hist.axvline(wall.SUCCESS_RADIUS, color='k', ls='--', label='success radius')
  ax_hist.set_xlabel('final distance to goal (grid px)')
  ax_hist.set_ylabel('episodes')
  ax_hist.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


def _mark(image: np.ndarray, points: np.ndarray, colour: np.ndarray) -> np.ndarray:
  """Paints the pixels under `points (K, 2)` (x, y) of an `(S, S, 3)` 65-grid image."""
  size = image.shape[0]
  cols = np.clip(np.rint(points[:, 0]).astype(int), 0, size - 1)
  rows = np.clip(np.rint(points[:, 1]).astype(int), 0, size - 1)
  image[rows, cols] = colour
  return image


def episode_frames(data: dict, episode: int, frameskip: int, num_execute: int,
                   scale: int = 4) -> np.ndarray:
  """`(T + 1, S*scale, 2*S*scale, 3)` uint8 frames: left the observation with the active
  plan's true-dynamics path (blue) and the goal (green); right the goal image."""
  traj = data['trajectory'][episode]
  render = jax.jit(jax.vmap(lambda p: wall.render(p, wall.GRID_SIZE)))
  observations = np.array(render(traj))
  goal_image = np.asarray(render(data['goal'][episode][None]))[0]
  per_plan = frameskip * num_execute
  frames = []
  for t, obs in enumerate(observations):
    plan = data['planned'][episode][min(t // per_plan, len(data['planned'][episode]) - 1)]
    obs = _mark(obs, plan, PLAN_COLOUR)
    obs = _mark(obs, data['goal'][episode][None], GOAL_COLOUR)
    frame = np.concatenate([obs, np.full((obs.shape[0], 2, 3), 128, np.uint8), goal_image], 1)
    frames.append(np.repeat(np.repeat(frame, scale, 0), scale, 1))
  return np.stack(frames)


def save_episode_gifs(directory: str, data: dict, num_gifs: int, frameskip: int,
                      num_execute: int, fps: int = 6) -> list:
  """Writes `episode_<i>.gif` for the first `num_gifs` episodes; returns the paths."""
  import imageio.v2 as imageio

  os.makedirs(directory, exist_ok=True)
  paths = []
  for e in range(min(num_gifs, len(data['start']))):
    path = os.path.join(directory, f'episode_{e}.gif')
    imageio.mimsave(path, list(episode_frames(data, e, frameskip, num_execute)),
                    duration=1.0 / fps, loop=0)
    paths.append(path)
  return paths
