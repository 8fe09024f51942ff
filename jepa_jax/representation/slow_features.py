"""The slow-feature readout: a linear map of a frozen latent onto its slowest directions over
unlabeled video, weighted so that distances approximate commute times.

An action-free predictive stage 1 on a random walk learns features whose changes between
consecutive frames are predictable; standardised and decorrelated (SIGReg), their many channels
span fast harmonics of the position as well as the slow ones, and the fast ones fold the state
manifold, so far-apart frames look close (docs/stage1.md). Slow feature analysis (Wiskott and
Sejnowski 2002) orders the directions of the latent by how little they change per step: solve
`C_dot v = lambda C v` (C the latent's covariance, C_dot that of its frame-to-frame differences),
keep the k smallest lambda and scale each by 1 / sqrt(lambda), so that a squared distance sums
`(v_i . (z - z'))^2 / lambda_i`, the form of the commute-time distance of a diffusion
(Laplacian eigenmaps). Fit on frames only: no actions, states or labels.
"""

import numpy as np

# Ridge on the covariance (relative to its mean eigenvalue): the standardised latent can be
# rank-deficient (effective rank ~70 of 96 on Wall).
COVARIANCE_RIDGE = 1e-6


def slow_readout(latents: np.ndarray, num_components: int) -> tuple[np.ndarray, np.ndarray]:
  """The readout of `num_components` slowest directions.

  Args:
    latents: `(S, T, D)` latents of S sequences of T consecutive frames (each token position of
      a multi-token latent its own sequence).
    num_components: k <= D.

  Returns:
    `(kernel (D, k), bias (k,))` float64 with `readout(z) = z @ kernel + bias`: centred over the
    frames, slowest direction first, scaled by 1 / sqrt(its slowness) and then all by one
    factor so the mean channel variance over the frames is 1.
  """
  latents = np.asarray(latents, np.float64)
  if latents.ndim != 3 or latents.shape[1] < 2:
    raise ValueError(f'slow_readout needs (sequences, frames >= 2, channels) latents, got '
                     f'shape {latents.shape}')
  dim = latents.shape[-1]
  if not 1 <= num_components <= dim:
    raise ValueError(f'num_components={num_components} must be in [1, {dim}] (the channels)')
  frames = latents.reshape(-1, dim)
  mean = frames.mean(0)
  covariance = np.cov(frames, rowvar=False)
  covariance += COVARIANCE_RIDGE * np.trace(covariance) / dim * np.eye(dim)
  steps = np.diff(latents, axis=1).reshape(-1, dim)
  step_covariance = steps.T @ steps / len(steps)
  # Whiten, then diagonalise the step covariance: C^-1/2 C_dot C^-1/2 = U diag(lambda) U^T.
  variances, basis = np.linalg.eigh(covariance)
  whitening = basis / np.sqrt(variances)
  slowness, rotation = np.linalg.eigh(whitening.T @ step_covariance @ whitening)
  slowness = np.maximum(slowness[:num_components], np.finfo(np.float64).tiny)
  kernel = whitening @ rotation[:, :num_components] / np.sqrt(slowness)
  # Each whitened direction has unit variance, so channel i has variance 1 / slowness_i.
  kernel /= np.sqrt(np.mean(1.0 / slowness))
  return kernel, -mean @ kernel


def appended_readout(latents: np.ndarray, num_components: int, weight: float
                     ) -> tuple[np.ndarray, np.ndarray]:
  """The latent itself followed by its `num_components` slowest directions (`slow_readout`).

  The slow block gives the cost its global shape (far-apart frames far apart) and the latent
  keeps its local precision (docs/stage1.md). The block is scaled so that its total variance
  over the frames is `weight ** 2` times the latent's.

  Returns:
    `(kernel (D, D + k), bias (D + k,))` float64: identity and zero bias on the first D outputs.
  """
  if weight <= 0:
    raise ValueError(f'appended_readout weight must be > 0, got {weight}')
  kernel, bias = slow_readout(latents, num_components)
  dim = kernel.shape[0]
  covariance = np.cov(np.asarray(latents, np.float64).reshape(-1, dim), rowvar=False)
  scale = weight * np.sqrt(np.trace(covariance) / np.trace(kernel.T @ covariance @ kernel))
  return (np.concatenate([np.eye(dim), kernel * scale], axis=1),
          np.concatenate([np.zeros(dim), bias * scale]))


def fold_readout(encoder_params: dict, kernel: np.ndarray, bias: np.ndarray) -> dict:
  """Encoder params with the readout as the ViT's `output_proj` (`ViTConfig.output_dim`)."""
  return {**encoder_params, 'output_proj': {'kernel': np.asarray(kernel, np.float32),
                                            'bias': np.asarray(bias, np.float32)}}
