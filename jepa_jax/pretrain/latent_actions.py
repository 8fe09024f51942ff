"""Latent actions for stage 1: an inverse model that explains each target frame's change.

Predicting later frames from earlier ones without actions leaves the predictor to guess where
a randomly driven object went; the loss then rewards features that change slowly, and the
object's position, which changes fast, is encoded weakly (docs/stage1.md). A latent-action
model (inverse dynamics inferred from video alone, as in latent-action world models) reads the
change between the clip's first frame and a target frame through a `action_dim`-wide
bottleneck and hands it to the predictor. The prediction becomes nearly deterministic, so the
encoder is rewarded for features whose change a few numbers explain: the object's position.
No environment action, state or reward is read.

  LatentActionModel(action_dim, hidden, out_width).apply({'params': p},
      reference (B, C), frames (B, F, C))
    -> (actions (B, F, action_dim), embeddings (B, F, out_width))

`frame_offsets` turns per-frame embeddings into the per-target-token offsets the masked
predictor adds to its mask tokens.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jepa_jax.models import layers

Dtype = Any


class LatentActionModel(nn.Module):
  """MLP inverse model: `[reference, frame] -> action (action_dim) -> embedding (out_width)`."""
  action_dim: int
  hidden: int
  out_width: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, reference: jax.Array, frames: jax.Array) -> tuple[jax.Array, jax.Array]:
    pairs = jnp.concatenate([jnp.broadcast_to(reference[:, None], frames.shape), frames], -1)
    hidden = nn.gelu(layers.dense(self.hidden, self.dtype, 'inverse_hidden')(pairs))
    actions = layers.dense(self.action_dim, self.dtype, 'inverse_out')(hidden)
    return actions, layers.dense(self.out_width, self.dtype, 'action_embed')(actions)


def frame_pooled(tokens: jax.Array, grid: tuple[int, int, int]) -> jax.Array:
  """`(B, T' * H' * W', C)` tokens of a whole clip -> `(B, T', C)` means per tubelet."""
  batch, _, channels = tokens.shape
  return tokens.reshape(batch, grid[0], grid[1] * grid[2], channels).mean(axis=2)


def frame_offsets(embeddings: jax.Array, token_idx: jax.Array, grid: tuple[int, int, int]
                  ) -> jax.Array:
  """Per-tubelet `(B, T', W)` embeddings -> `(B, K, W)` at flat token indices `(B, K)` (each
  token gets its tubelet's)."""
  frame = token_idx // (grid[1] * grid[2])
  return jnp.take_along_axis(embeddings, frame[..., None], axis=1)
