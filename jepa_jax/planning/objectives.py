"""Planning objectives on predicted latents (docs/reference.md §5).

Reference objective: L2 = mean over all latent elements of `(goal - pred_H)^2` on the final
predicted latent only (L1 uses `|.|`); with proprioception,
`cost = visual + alpha * proprio` on embeddings with alpha = 0.1. The all-steps variant
averages the per-step cost over the H predicted steps. Per-patch proprio predictions (the
AdaLN reference) are scored against the goal embedding repeated over the patches, i.e. the
per-patch distances are averaged.
"""

import dataclasses

import jax
import jax.numpy as jnp

DISTANCES = ('l2', 'l1')


@dataclasses.dataclass(frozen=True)
class ObjectiveConfig:
  """distance: 'l2' (squared error) or 'l1'; final_step_only: score pred_H only (reference)
  or average over all H steps; proprio_weight: alpha (0 disables the proprio term);
  visual_weight: the visual term's weight (1 in the reference; 0 plans on proprio alone)."""
  distance: str = 'l2'
  final_step_only: bool = True
  proprio_weight: float = 0.1
  visual_weight: float = 1.0

  def __post_init__(self):
    if self.distance not in DISTANCES:
      raise ValueError(f'distance={self.distance!r} must be one of {DISTANCES}')
    if self.proprio_weight < 0 or self.visual_weight < 0:
      raise ValueError(f'objective weights must be >= 0, got visual {self.visual_weight}, '
                       f'proprio {self.proprio_weight}')


def sequence_distance(pred: jax.Array, goal: jax.Array, distance: str = 'l2',
                      final_step_only: bool = True) -> jax.Array:
  """Distance of predicted sequences to a goal.

  Args:
    pred: `(N, H, ...)` predictions (latents `(N, H, h, w, D)` or embeddings `(N, H, Pe)`).
    goal: `(...)` goal of one step (broadcast over N and H).
    distance: 'l2' mean squared error, 'l1' mean absolute error over the element axes.
    final_step_only: score step H only, otherwise the mean over the H steps.
  Returns:
    `(N,)` costs.
  """
  if distance not in DISTANCES:
    raise ValueError(f'distance={distance!r} must be one of {DISTANCES}')
  if pred.shape[2:] != goal.shape:
    raise ValueError(f'goal shape {goal.shape} does not match the per-step prediction shape '
                     f'{pred.shape[2:]} of pred {pred.shape} (expected (N, H, ...))')
  if final_step_only:
    pred = pred[:, -1:]
  diff = pred - goal
  err = jnp.square(diff) if distance == 'l2' else jnp.abs(diff)
  return err.reshape(err.shape[0], -1).mean(axis=-1)


def latent_cost(pred_latents: jax.Array, goal_latent: jax.Array, pred_proprio=None,
                goal_proprio=None, config: ObjectiveConfig = ObjectiveConfig()) -> jax.Array:
  """`(N,)` cost = visual_weight * visual distance + alpha * proprio distance (when proprio
  is given and `config.proprio_weight` > 0). Shapes: pred_latents `(N, H, h, w, D)`, goal_latent
  `(h, w, D)`, pred_proprio `(N, H, Pe)` or per patch `(N, H, h, w, Pe)`, goal_proprio `(Pe,)`
  (repeated over the patches for per-patch predictions) or `(h, w, Pe)`."""
  cost = config.visual_weight * sequence_distance(pred_latents, goal_latent, config.distance,
                                                  config.final_step_only)
  if pred_proprio is not None and config.proprio_weight > 0:
    if goal_proprio is None:
      raise ValueError('pred_proprio was given without goal_proprio')
    if pred_proprio.ndim == 5 and goal_proprio.ndim == 1:  # per-patch predictions
      goal_proprio = jnp.broadcast_to(goal_proprio, pred_proprio.shape[2:])
    cost = cost + config.proprio_weight * sequence_distance(
        pred_proprio, goal_proprio, config.distance, config.final_step_only)
  return cost
