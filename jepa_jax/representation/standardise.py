"""Latents standardised over the batch (LeWM's BatchNorm projector without affine), and the
same standardisation folded into an exported encoder.

Both methods use it: LeWM on its per-frame latents, stage 1 (`pretrain.standardise`) on the
context and target features. A per-channel standardisation over the global batch makes "every
frame has the same latent" impossible, which an EMA target or SIGReg alone did not prevent at
CPU scale (docs/results.md).
"""

from __future__ import annotations

from typing import Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np

BATCHNORM_EPS = 1e-5


def frozen_output_norm(encoder_params: dict) -> dict:
  """The encoder params with the final LayerNorm's affine held at its init (scale 1, bias 0):
  the batch normalisation after it (`batch_normalise`) owns the output scale."""
  return {**encoder_params, 'norm': jax.lax.stop_gradient(encoder_params['norm'])}


def batch_normalise(z: jax.Array, eps: float = BATCHNORM_EPS
                    ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Each latent channel standardised over every other axis, e.g. batch, frames and tokens
  `(B, T, h, w, D)` (under a sharded jit: the global batch).

  Without an EMA or a stop-gradient the end-to-end loss has a trivial minimum, "every frame has
  the same latent"; SIGReg alone pushes back only in proportion to the latents' spread, which
  the prediction loss shrinks faster (measured: the latent std fell from 1e-3 to 7e-4 in 600
  steps at lambda 0.1, to exact collapse by step 900). Standardising makes the spread fixed.

  Returns:
    `(normalised z float32, mean (D,), std (D,))`.
  """
  axes = tuple(range(z.ndim - 1))
  z = z.astype(jnp.float32)
  mean = jnp.mean(z, axis=axes)
  std = jnp.sqrt(jnp.var(z, axis=axes) + eps)
  return (z - mean) / std, mean, std


def fold_batchnorm(encoder_params: dict, mean: np.ndarray, std: np.ndarray) -> dict:
  """Folds the standardisation `(LN(x) - mean) / std` into the final LayerNorm's affine, so the
  exported ViT alone outputs the standardised latent: scale' = scale / std,
  bias' = (bias - mean) / std."""
  norm = encoder_params['norm']
  return {**encoder_params, 'norm': {'scale': np.asarray(norm['scale']) / std,
                                     'bias': (np.asarray(norm['bias']) - mean) / std}}


def latent_statistics(encode: Callable[[np.ndarray], jax.Array],
                      batches: Iterable[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
  """Per-channel mean and std `(D,)` float64 of `encode(batch)` (any shape `(..., D)`) over
  `batches` of frames: the statistics that `fold_batchnorm` bakes into an export."""
  total, total_sq, count = 0.0, 0.0, 0
  for batch in batches:
    z = np.asarray(encode(batch), np.float64)
    z = z.reshape(-1, z.shape[-1])
    total, total_sq, count = total + z.sum(0), total_sq + np.square(z).sum(0), count + len(z)
  mean = total / count
  return mean, np.sqrt(np.maximum(total_sq / count - mean ** 2, 0.0) + BATCHNORM_EPS)
