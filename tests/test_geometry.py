"""Latent-geometry measures: closed forms, scipy as the reference, and encoders of known quality."""

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from jepa_jax import envs
from jepa_jax.representation import geometry

IMAGE_SIZE = 32


def orthonormal_centred(rng, n, k):
  """`(n, k)` centred columns with orthonormal directions (all singular values 1)."""
  x = rng.normal(size=(n, k))
  return np.linalg.qr(x - x.mean(0))[0]


def test_effective_rank_closed_forms():
  rng = np.random.default_rng(0)
  basis = np.linalg.qr(rng.normal(size=(16, 16)))[0]
  # k orthogonal directions with equal spread -> k equal singular values -> rank exactly k
  # (the constant offset is removed by the centring).
  for k in (1, 3, 7):
    features = orthonormal_centred(rng, 200, k) @ basis[:k] + 5.0
    assert geometry.effective_rank(features) == pytest.approx(k, rel=1e-6)
  # Unequal spread: exp(entropy) of p = s / sum(s).
  s = np.array([3.0, 1.0])
  p = s / s.sum()
  features = (orthonormal_centred(rng, 100, 2) * s) @ basis[:2]
  assert geometry.effective_rank(features) == pytest.approx(np.exp(-(p * np.log(p)).sum()),
                                                            rel=1e-6)


def test_spearman_matches_scipy():
  rng = np.random.default_rng(1)
  a = rng.normal(size=300)
  b = a ** 3 + rng.normal(size=300)
  assert geometry.spearman(a, b) == pytest.approx(stats.spearmanr(a, b).statistic, abs=1e-9)


def test_cost_landscape_is_the_planning_l2():
  rng = np.random.default_rng(2)
  latents, goal = rng.normal(size=(5, 12)), rng.normal(size=12)
  expected = [np.mean((goal - row) ** 2) for row in latents]
  np.testing.assert_allclose(geometry.cost_landscape(latents, goal), expected, rtol=1e-12)


def centroid_encoder(frames):
  """An independent 'perfect' encoder: the dot's centroid from the redness of the pixels."""
  x = np.asarray(frames, np.float64)
  red = np.clip(x[..., 0] - x[..., 1], 0, None)               # 255 on the dot, 0 elsewhere
  grid = (np.arange(IMAGE_SIZE) + 0.5) * 65 / IMAGE_SIZE - 0.5
  total = red.sum((1, 2)) + 1e-9
  cx = (red.sum(1) * grid).sum(1) / total
  cy = (red.sum(2) * grid).sum(1) / total
  return jnp.asarray(np.stack([cx, cy], -1)[:, None, None, :], jnp.float32)


def noise_encoder(frames):
  """Ignores the frame: latents unrelated to the dot."""
  rng = np.random.default_rng(int(np.asarray(frames).sum()) % 2**32)
  return jnp.asarray(rng.normal(size=(len(frames), 2, 2, 4)), jnp.float32)


def test_measures_separate_a_perfect_from_an_uninformative_encoder(tmp_path):
  env = envs.get('wall')
  path = str(tmp_path / 'landscape.png')
  out = geometry.compare_encoders(
      {'trained': centroid_encoder, 'random_encoder': noise_encoder}, env,
      image_size=IMAGE_SIZE, landscape_path=path, num_fit=300, num_eval=200, num_pairs=2000,
      resolution=8)
  assert out['latent_distance_spearman'] > 0.95
  assert out['landscape_spearman'] > 0.95
  assert out['probe_error_mean_pool'] < 2.0
  assert abs(out['latent_distance_spearman_random_encoder']) < 0.1
  assert out['probe_error_mean_pool_random_encoder'] > 8.0
  assert out['effective_rank'] <= 2.0 + 1e-9
  assert 3.0 < out['effective_rank_random_encoder'] <= 4.0 + 1e-9
  with open(path, 'rb') as f:
    assert f.read(8) == b'\x89PNG\r\n\x1a\n'


def test_probe_groups_report_what_the_latent_reads_one_group_at_a_time():
  env = dataclasses.replace(envs.get('wall'), probe_groups=(('x', (0,)), ('y', (1,))))

  def x_only_encoder(frames):  # the dot's x exactly, its y replaced by noise
    latent = np.array(centroid_encoder(frames))
    latent[..., 1] = np.random.default_rng(0).normal(size=latent.shape[:-1])
    return jnp.asarray(latent)

  out = geometry.measure_encoder(x_only_encoder, env, image_size=IMAGE_SIZE, num_fit=300,
                                 num_eval=200, num_pairs=500, resolution=4)
  assert out['probe_error_x'] < 1.0
  assert out['probe_error_y'] > 8.0
  assert 'probe_error_x' not in geometry.measure_encoder(
      x_only_encoder, envs.get('wall'), image_size=IMAGE_SIZE, num_fit=300, num_eval=200,
      num_pairs=500, resolution=4)
