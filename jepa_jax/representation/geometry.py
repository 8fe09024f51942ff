"""Latent geometry of a frozen encoder: does an L2 cost between latents guide a planner?

Measures that a random-init encoder does not pass (it is always measured alongside):
  probe_error_mean_pool  ridge probe from mean-pooled tokens to the probe targets (Wall: the
                            dot position); a random ViT's flattened tokens are nearly linear
                            in pixels, its pooled tokens are not;
  probe_error_<group>       the flattened latent's probe for one named group of targets
                            (`env.probe_groups`; Push-T: block, block_angle, agent);
  latent_distance_spearman  Spearman correlation between the planning cost (L2 over the whole
                            latent) and the true distance, over random pairs of frames;
  effective_rank            exp(entropy) of the normalised singular values of the pooled
                            features (1 = collapsed to a line, D = isotropic);
  landscape_spearman        the same correlation for the cost landscape: L2 latent distance of
                            frames on a grid of states to one goal frame (saved as a picture).

Frames come from the environment interface (`random_state`, `render`, `probe_targets`), so the
measures need no dataset and never train the encoder. An encoder here is a function
`frames uint8 (B, S, S, 3) -> latents (B, ...)` (any token layout; the last axis is channels).
"""

from __future__ import annotations

import functools
from typing import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from jepa_jax.envs import base
from jepa_jax.representation import probe as probe_lib

Encoder = Callable[[np.ndarray], jax.Array]


def effective_rank(features: np.ndarray) -> float:
  """exp(Shannon entropy) of the singular values of centred `(N, F)` features, normalised to
  sum 1 (Roy and Vetterli 2007). Between 1 and min(N, F)."""
  x = np.asarray(features, np.float64)
  x = x - x.mean(0)
  singular = np.linalg.svd(x, compute_uv=False)
  if singular.sum() <= 0:
    return 1.0
  p = singular / singular.sum()
  p = p[p > 0]
  return float(np.exp(-(p * np.log(p)).sum()))


def spearman(a: np.ndarray, b: np.ndarray) -> float:
  """Spearman rank correlation of two `(N,)` arrays (Pearson on ranks; no tie averaging)."""
  ranks = [np.argsort(np.argsort(np.asarray(v, np.float64), kind='stable'), kind='stable')
           for v in (a, b)]
  return float(np.corrcoef(ranks[0], ranks[1])[0, 1])


@functools.lru_cache(maxsize=None)
def _batch_renderer(env: base.Environment, image_size: int):
  return jax.jit(jax.vmap(lambda s: env.render(s, image_size)))


def render_states(env: base.Environment, states: jax.Array, image_size: int) -> np.ndarray:
  """uint8 `(N, S, S, 3)` frames of `(N, state_dim)` states."""
  return np.asarray(_batch_renderer(env, image_size)(jnp.asarray(states, jnp.float32)))


@functools.lru_cache(maxsize=None)
def _state_sampler(env: base.Environment, count: int):
  return jax.jit(lambda key: jax.vmap(env.random_state)(jax.random.split(key, count)))


@functools.lru_cache(maxsize=None)
def _target_reader(env: base.Environment):
  return jax.jit(jax.vmap(env.probe_targets))


def random_states(env: base.Environment, key: jax.Array, count: int) -> jax.Array:
  """`(count, state_dim)` states from the environment's start-state distribution."""
  return _state_sampler(env, count)(key)


def probe_targets(env: base.Environment, states: jax.Array) -> np.ndarray:
  """`(N, K)` float64 probe targets (Wall: dot positions) of `(N, state_dim)` states."""
  return np.asarray(_target_reader(env)(jnp.asarray(states, jnp.float32)), np.float64)


def encode_frames(encode: Encoder, frames: np.ndarray, batch_size: int = 256) -> np.ndarray:
  """`(N, F)` float32 flattened latents (every token, every channel) of uint8 frames."""
  return probe_lib.frame_features(encode, frames, batch_size)['patch']


def cost_landscape(latents: np.ndarray, goal_latent: np.ndarray) -> np.ndarray:
  """Planning cost (mean squared difference over all latent elements, docs/reference.md §5) of each
  `(N, F)` latent to the `(F,)` goal latent: `(N,)` float64."""
  diff = np.asarray(latents, np.float64) - np.asarray(goal_latent, np.float64)
  return np.mean(np.square(diff), axis=-1)


def landscape_grid(states: np.ndarray, resolution: int) -> np.ndarray:
  """`(resolution**2, S)` states on a regular grid of the first two state coordinates (Wall:
  the dot's x, y; PointMaze: the ball's) over the bounding box of `(N, S)` states, row-major
  with the second coordinate (the image row) as the row; the other coordinates are those of
  `states[0]` (e.g. PointMaze's velocity, which the frames do not show)."""
  lo, hi = np.min(states[:, :2], 0), np.max(states[:, :2], 0)
  xs = np.linspace(lo[0], hi[0], resolution)
  ys = np.linspace(lo[1], hi[1], resolution)
  grid_x, grid_y = np.meshgrid(xs, ys)
  grid = np.repeat(np.asarray(states[:1], np.float32), resolution ** 2, 0)
  grid[:, 0], grid[:, 1] = grid_x.ravel(), grid_y.ravel()
  return grid


def plot_landscapes(path: str, landscapes: Mapping[str, np.ndarray], grid_states: np.ndarray,
                    goal_target: np.ndarray, goal_frame: np.ndarray,
                    frame_extent: tuple[float, float, float, float] | None) -> None:
  """Saves one panel per encoder: the cost landscape `(R, R)` as colours over the goal frame
  (walls in black; `frame_extent` = the env's `plot_extent`, None = no frame drawn), the goal
  marked with a star."""
  import matplotlib
  matplotlib.use('Agg')
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top

  extent = (grid_states[:, 0].min(), grid_states[:, 0].max(),
            grid_states[:, 1].max(), grid_states[:, 1].min())
  fig, axes = plt.subplots(1, len(landscapes), figsize=(4.5 * len(landscapes), 4.2),
                           squeeze=False)
  for ax, (name, costs) in zip(axes[0], landscapes.items()):
    if frame_extent is not None:
      ax.imshow(goal_frame, extent=frame_extent)
    image = ax.imshow(costs, extent=extent, alpha=0.75, cmap='viridis')
    if frame_extent is not None:  # dark pixels (Wall: walls) drawn opaque on top
      dark = (goal_frame.max(-1) < 64).astype(float)
      ax.imshow(np.ma.masked_where(dark == 0, dark), extent=frame_extent, cmap='gray_r',
                vmin=0, vmax=1)
    ax.plot(goal_target[0], goal_target[1], marker='*', color='red', markersize=14)
    ax.set_title(f'{name}: L2 latent cost to goal')
    fig.colorbar(image, ax=ax, fraction=0.046)
  fig.tight_layout()
  fig.savefig(path, dpi=80)
  plt.close(fig)


def measure_encoder(encode: Encoder, env: base.Environment, *, image_size: int,
                    num_fit: int = 2000, num_eval: int = 1000, num_pairs: int = 5000,
                    resolution: int = 24, seed: int = 0) -> dict:
  """Every geometry measure of one encoder on frames rendered from random states.

  Returns:
    `{'probe_error', 'probe_error_mean_pool', 'latent_distance_spearman',
      'latent_distance_spearman_mean_pool', 'effective_rank', 'landscape_spearman',
      'latent_variance', 'landscape' (R, R) costs}` and `probe_error_<group>` for each of the
      env's `probe_groups` (a probe of the flattened latent fit to that group's targets alone;
      mean Euclidean error over its columns); probe errors in the targets' units.
  """
  fit_key, eval_key, goal_key = jax.random.split(jax.random.PRNGKey(seed), 3)
  fit_states = random_states(env, fit_key, num_fit)
  eval_states = random_states(env, eval_key, num_eval)
  targets = {name: probe_targets(env, s) for name, s in (('fit', fit_states), ('eval', eval_states))}
  features = {name: probe_lib.frame_features(encode, render_states(env, s, image_size))
              for name, s in (('fit', fit_states), ('eval', eval_states))}
  out = {}
  for kind, suffix in (('patch', ''), ('mean', '_mean_pool')):
    out[f'probe_error{suffix}'] = probe_lib.fit_position_probe(
        features['fit'][kind], targets['fit'], features['eval'][kind], targets['eval'])['error']
    out[f'latent_distance_spearman{suffix}'] = probe_lib.latent_distance_correlation(
        features['eval'][kind], targets['eval'], num_pairs=num_pairs, seed=seed)
  for group, columns in env.probe_groups:  # the latent as a whole, one target group at a time
    out[f'probe_error_{group}'] = probe_lib.fit_position_probe(
        features['fit']['patch'], targets['fit'][:, columns], features['eval']['patch'],
        targets['eval'][:, columns])['error']
  out['effective_rank'] = effective_rank(features['eval']['mean'])
  out['latent_variance'] = float(np.var(features['eval']['patch'], axis=0).mean())

  _, goal = jax.jit(env.sample_start_goal)(goal_key)
  grid = landscape_grid(np.asarray(fit_states), resolution)
  grid_latents = encode_frames(encode, render_states(env, jnp.asarray(grid), image_size))
  goal_latent = encode_frames(encode, render_states(env, goal[None], image_size))[0]
  costs = cost_landscape(grid_latents, goal_latent)
  grid_targets = probe_targets(env, grid)
  goal_target = probe_targets(env, goal[None])[0]
  out['landscape_spearman'] = spearman(costs, np.linalg.norm(grid_targets - goal_target, axis=-1))
  out['landscape'] = costs.reshape(resolution, resolution)
  out['_landscape_grid'] = grid
  out['_goal'] = (goal_target, render_states(env, goal[None], image_size)[0])
  return out


def compare_encoders(encoders: Mapping[str, Encoder], env: base.Environment, *,
                     image_size: int, landscape_path: str | None = None, **kwargs) -> dict:
  """`measure_encoder` for each encoder; flat JSON-ready keys `<measure>` for the first
  encoder and `<measure>_<name>` for the others (e.g. '_random_encoder'); optionally saves the
  side-by-side cost landscapes to `landscape_path`, drawn over the goal frame."""
  summary, landscapes, picture = {}, {}, None
  for i, (name, encode) in enumerate(encoders.items()):
    measured = measure_encoder(encode, env, image_size=image_size, **kwargs)
    landscapes[name] = measured.pop('landscape')
    picture = (measured.pop('_landscape_grid'), measured.pop('_goal'))
    suffix = '' if i == 0 else f'_{name}'
    summary.update({f'{key}{suffix}': value for key, value in measured.items()})
  if landscape_path is not None:
    grid, (goal_target, goal_frame) = picture
    plot_landscapes(landscape_path, landscapes, grid, goal_target, goal_frame, env.plot_extent)
  return summary
