"""SIGReg: a float64 numpy re-derivation, global-batch semantics on 8 devices, sensitivity."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jepa_jax import sharding as sharding_lib
from jepa_jax.representation import sigreg as sigreg_lib


def numpy_sigreg(embeddings, directions, num_knots=17, max_frequency=3.0):
  """Epps-Pulley statistic on projections, written from docs/reference.md §9 in float64 loops."""
  x = np.asarray(embeddings, np.float64)
  u = np.asarray(directions, np.float64)
  t = np.linspace(0.0, max_frequency, num_knots)
  dt = t[1] - t[0]
  total = 0.0
  for frame in x:                      # (B, D)
    for m in range(u.shape[1]):
      h = frame @ u[:, m]              # (B,)
      # |ECF(t) - exp(-t^2/2)|^2 weighted by exp(-t^2/2), integrated over [-3, 3] by the
      # trapezoid rule on the symmetric grid -3..3 (the integrand is even).
      full_t = np.concatenate([-t[:0:-1], t])
      ecf = np.exp(1j * np.outer(full_t, h)).mean(1)
      integrand = np.abs(ecf - np.exp(-full_t ** 2 / 2)) ** 2 * np.exp(-full_t ** 2 / 2)
      total += np.trapezoid(integrand, dx=dt) * len(h)
  return total / (x.shape[0] * u.shape[1])


def test_matches_float64_numpy_rederivation():
  rng = np.random.default_rng(0)
  embeddings = rng.normal(size=(3, 40, 6)) * 1.3 + 0.2
  directions = sigreg_lib.random_directions(jax.random.key(1), 6, 16)
  np.testing.assert_allclose(np.linalg.norm(directions, axis=0), 1.0, rtol=1e-6)
  ours = sigreg_lib.sigreg_statistic(jnp.asarray(embeddings, jnp.float32), directions)
  np.testing.assert_allclose(float(ours), numpy_sigreg(embeddings, np.asarray(directions)),
                             rtol=2e-5)


def test_gaussian_scores_far_below_collapsed_and_shifted():
  rng = np.random.default_rng(1)
  directions = sigreg_lib.random_directions(jax.random.key(0), 8, 64)
  gaussian = rng.normal(size=(2, 512, 8))
  collapsed = np.full((2, 512, 8), 0.5)
  shifted = gaussian * 0.2 + 1.0
  score = lambda x: float(sigreg_lib.sigreg_statistic(jnp.asarray(x, jnp.float32), directions))
  assert score(gaussian) < 2.0          # O(1) under the null: sampling noise times B
  assert score(collapsed) > 50 * score(gaussian)
  assert score(shifted) > 50 * score(gaussian)


def test_global_batch_on_8_devices_equals_one_device():
  assert jax.device_count() == 8, 'conftest sets 8 fake CPU devices'
  rng = np.random.default_rng(2)
  # Devices see different distributions: a per-device statistic would differ from the global.
  embeddings = np.concatenate([rng.normal(size=(2, 8, 5)) + shift for shift in range(8)], 1)
  key = jax.random.key(3)
  single = sigreg_lib.sigreg(key, jnp.asarray(embeddings, jnp.float32), 32)
  mesh = sharding_lib.make_mesh({'data': -1, 'fsdp': 1})
  sharded = jax.device_put(jnp.asarray(embeddings, jnp.float32),
                           NamedSharding(mesh, P(None, ('data', 'fsdp'), None)))
  assert len(sharded.sharding.device_set) == 8
  value = jax.jit(lambda x: sigreg_lib.sigreg(key, x, 32))(sharded)
  np.testing.assert_allclose(float(value), float(single), rtol=1e-5)
  per_device = np.mean([float(sigreg_lib.sigreg(key, jnp.asarray(embeddings[:, 8 * i:8 * i + 8],
                                                                 jnp.float32), 32))
                        for i in range(8)])
  assert abs(per_device - float(single)) > 0.1 * float(single)


def test_rejects_unbatched_embeddings():
  with pytest.raises(ValueError, match='embeddings'):
    sigreg_lib.sigreg(jax.random.key(0), jnp.zeros((4, 8)))
