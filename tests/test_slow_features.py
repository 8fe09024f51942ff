"""The slow-feature readout against scipy's generalised eigensolver, and on a latent whose slow
part is known."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

from jepa_jax.models import vit
from jepa_jax.representation import slow_features


def mixed_random_walk(seed=0, sequences=40, steps=60):
  """A latent `(S, T, 6)`: a 2-D random walk (slow) and 4 channels of i.i.d. noise per frame
  (fast), mixed by a random invertible matrix. Returns (latents, walk (S, T, 2))."""
  rng = np.random.default_rng(seed)
  walk = np.cumsum(rng.normal(size=(sequences, steps, 2)) * 0.1, axis=1)
  noise = rng.normal(size=(sequences, steps, 4))
  mixing = rng.normal(size=(6, 6))
  return np.concatenate([walk, noise], -1) @ mixing + rng.normal(size=6), walk


def test_readout_matches_scipy_generalised_eigenvectors():
  latents, _ = mixed_random_walk()
  kernel, bias = slow_features.slow_readout(latents, 3)
  frames = latents.reshape(-1, 6)
  covariance = np.cov(frames, rowvar=False)
  covariance += slow_features.COVARIANCE_RIDGE * np.trace(covariance) / 6 * np.eye(6)
  steps = np.diff(latents, axis=1).reshape(-1, 6)
  slowness, vectors = scipy.linalg.eigh(steps.T @ steps / len(steps), covariance)
  # scipy's vectors are C-orthonormal (unit variance): the readout scales them by
  # 1 / sqrt(slowness) and one common factor, up to each column's sign.
  expected = vectors[:, :3] / np.sqrt(slowness[:3])
  expected /= np.sqrt(np.mean(1.0 / slowness[:3]))
  signs = np.sign(np.sum(kernel * expected, axis=0))
  np.testing.assert_allclose(kernel * signs, expected, rtol=1e-6, atol=1e-9)
  out = frames @ kernel + bias
  np.testing.assert_allclose(out.mean(0), 0.0, atol=1e-9)
  np.testing.assert_allclose(out.var(0, ddof=1).mean(), 1.0, rtol=1e-4)


def test_two_slowest_directions_recover_the_walk():
  """The 2-D walk is a linear function of the 2 slowest outputs (R^2 ~ 1); the fastest
  output carries none of it."""
  latents, walk = mixed_random_walk(seed=1)
  kernel, bias = slow_features.slow_readout(latents, 6)
  out = latents.reshape(-1, 6) @ kernel + bias
  target = walk.reshape(-1, 2)

  def r_squared(features):
    design = np.concatenate([features, np.ones((len(features), 1))], 1)
    fit = design @ np.linalg.lstsq(design, target, rcond=None)[0]
    return 1 - np.square(target - fit).sum() / np.square(target - target.mean(0)).sum()

  assert r_squared(out[:, :2]) > 0.999
  assert r_squared(out[:, -1:]) < 0.05


def test_appended_readout_keeps_the_latent_and_weights_the_slow_block():
  """Identity on the latent, then slow_readout's block scaled to `weight ** 2` times the
  latent's total variance (float64, over the same frames)."""
  latents, _ = mixed_random_walk(seed=2)
  kernel, bias = slow_features.appended_readout(latents, 2, weight=0.5)
  slow_kernel, slow_bias = slow_features.slow_readout(latents, 2)
  frames = latents.reshape(-1, 6)
  out = frames @ kernel + bias
  np.testing.assert_allclose(out[:, :6], frames, atol=1e-12)
  block = out[:, 6:]
  scale = block[:, 0] / (frames @ slow_kernel[:, 0] + slow_bias[0])
  np.testing.assert_allclose(scale, scale[0], rtol=1e-9)
  np.testing.assert_allclose(block, (frames @ slow_kernel + slow_bias) * scale[0], rtol=1e-9,
                             atol=1e-12)
  total = lambda x: np.var(x, axis=0, ddof=1).sum()
  np.testing.assert_allclose(total(block) / total(frames), 0.25, rtol=1e-9)
  with pytest.raises(ValueError, match='weight must be > 0'):
    slow_features.appended_readout(latents, 2, weight=0.0)


def test_vit_output_map_is_the_readout_of_the_final_norm():
  """`ViTConfig.output_dim`: the encoder's output is its final LayerNorm's output times the
  folded kernel plus bias, and the world model's latent width is `latent_dim`."""
  base = vit.ViTConfig(image_size=16, patch_size=8, tubelet_size=1, width=16, depth=1,
                       num_heads=2)
  video = jax.random.normal(jax.random.PRNGKey(0), (2, 1, 16, 16, 3))
  params = vit.ViTEncoder(base).init(jax.random.PRNGKey(1), video)['params']
  rng = np.random.default_rng(0)
  kernel, bias = rng.normal(size=(16, 3)), rng.normal(size=3)
  folded = slow_features.fold_readout(jax.device_get(params), kernel, bias)
  mapped = vit.ViTConfig(**{**base.__dict__, 'output_dim': 3})
  out = vit.ViTEncoder(mapped).apply({'params': folded}, video)
  plain = np.asarray(vit.ViTEncoder(base).apply({'params': params}, video), np.float64)
  assert out.shape == (2, 1, 2, 2, 3) and mapped.latent_dim == 3 and base.latent_dim == 16
  np.testing.assert_allclose(out, plain @ kernel + bias, rtol=1e-4, atol=1e-4)
  assert jnp.all(jnp.isfinite(out))
