"""V-JEPA losses: L1 between predicted and LayerNorm-ed target features (docs/reference.md §1)."""

from typing import Sequence

import jax
import jax.numpy as jnp

# torch.nn.functional.layer_norm's default epsilon, which the reference uses for targets.
TARGET_LAYERNORM_EPS = 1e-5


def normalize_targets(features: jax.Array, eps: float = TARGET_LAYERNORM_EPS) -> jax.Array:
  """LayerNorm over the last (feature) axis without affine parameters, in float32.

  Args:
    features: `(..., D)` target-encoder features.

  Returns:
    `(..., D)` float32 features with zero mean and unit variance per token.
  """
  features = features.astype(jnp.float32)
  mean = features.mean(axis=-1, keepdims=True)
  var = jnp.square(features - mean).mean(axis=-1, keepdims=True)
  return (features - mean) * jax.lax.rsqrt(var + eps)


def gather_tokens(tokens: jax.Array, indices: jax.Array) -> jax.Array:
  """Selects tokens per example: `(B, N, D)`, int `(B, K)` -> `(B, K, D)`."""
  return jnp.take_along_axis(tokens, indices[..., None], axis=1)


def l1_loss(predictions: jax.Array, targets: jax.Array) -> jax.Array:
  """Mean absolute error over every token and feature: `(B, K, D)` x2 -> scalar float32."""
  return jnp.abs(predictions.astype(jnp.float32) - targets.astype(jnp.float32)).mean()


def weighted_l1_loss(predictions: jax.Array, targets: jax.Array, weights: jax.Array
                     ) -> jax.Array:
  """`l1_loss` with a weight per token: `(B, K, D)` x2, `(B, K)` -> scalar float32, the mean
  over tokens of `weight * mean_D |pred - target|` (weights 1 give `l1_loss`)."""
  per_token = jnp.abs(predictions.astype(jnp.float32) - targets.astype(jnp.float32)).mean(-1)
  return (weights.astype(jnp.float32) * per_token).mean()


def context_distance_weights(context_idx: jax.Array, target_idx: jax.Array,
                             grid: tuple[int, int, int]) -> jax.Array:
  """V-JEPA 2.1's weights of the dense loss's context tokens (docs/reference.md §10): each
  visible token counts 1 / sqrt(d), d its Euclidean distance on the `(T', H', W')` token grid
  (in tokens) to the nearest masked (target) token of its group, so tokens next to the mask
  count most.

  Args:
    context_idx: int `(B, Kc)` flat token indices (row-major over `grid`).
    target_idx: int `(B, Kt)`, disjoint from `context_idx` (so d >= 1).
    grid: `(T', H', W')`.

  Returns:
    `(B, Kc)` float32 weights in (0, 1].
  """
  def coordinates(indices):
    return jnp.stack(jnp.unravel_index(indices, grid), axis=-1).astype(jnp.float32)

  offsets = coordinates(context_idx)[:, :, None] - coordinates(target_idx)[:, None]
  squared = jnp.square(offsets).sum(-1).min(-1)  # (B, Kc) squared distance to the nearest
  return squared ** -0.25


def masked_prediction_loss(predictions: Sequence[jax.Array], targets: jax.Array,
                           target_indices: Sequence[jax.Array]) -> jax.Array:
  """V-JEPA loss: L1 at each group's target tokens, averaged over mask groups.

  Args:
    predictions: per group `(B, Kt_g, D)` predictor outputs at the target tokens.
    targets: `(B, N, D)` normalised target features of the full clip (`normalize_targets`),
      N = T' * H' * W' tokens in row-major order.
    target_indices: per group int `(B, Kt_g)` flat token indices of the predictions.

  Returns:
    Scalar float32 loss `mean_g mean |pred_g - targets[idx_g]|`.
  """
  if len(predictions) != len(target_indices) or not predictions:
    raise ValueError(f'need one target-index array per prediction, got {len(predictions)} '
                     f'predictions and {len(target_indices)} index arrays')
  losses = [l1_loss(p, gather_tokens(targets, idx))
            for p, idx in zip(predictions, target_indices)]
  return jnp.mean(jnp.stack(losses))
