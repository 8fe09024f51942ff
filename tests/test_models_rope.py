"""3D RoPE (jepa_jax/models/rope.py) against float64 numpy re-derivations of docs/reference.md §3a."""

import numpy as np
import pytest
import jax.numpy as jnp

from jepa_jax.models import rope


def _numpy_rope_reference(x, pos, theta=10000.0):
  """docs/reference.md §3a written out element by element (float64): x (N, hd), pos (N, 3)."""
  n, hd = x.shape
  d = 2 * ((hd // 3) // 2)
  half = d // 2
  out = x.copy()
  for axis in range(3):
    for tok in range(n):
      seg = x[tok, axis * d:(axis + 1) * d]
      for j in range(d):
        th = pos[tok, axis] * theta ** (-(j % half) / half)  # concatenated tables: j mod d/2
        partner = -seg[j + 1] if j % 2 == 0 else seg[j - 1]  # interleaved pairs
        out[tok, axis * d + j] = seg[j] * np.cos(th) + partner * np.sin(th)
  return out


def _numpy_rope_clean(x, pos, theta=10000.0):
  """Proper rotation of each pair (2i, 2i+1) by pos * w_i."""
  n, hd = x.shape
  d = 2 * ((hd // 3) // 2)
  out = x.copy()
  for axis in range(3):
    for i in range(d // 2):
      th = pos[:, axis] * theta ** (-i / (d / 2))
      a, b = x[:, axis * d + 2 * i], x[:, axis * d + 2 * i + 1]
      out[:, axis * d + 2 * i] = a * np.cos(th) - b * np.sin(th)
      out[:, axis * d + 2 * i + 1] = a * np.sin(th) + b * np.cos(th)
  return out


def test_axis_dim_matches_formula():
  assert rope.axis_dim(25) == 8  # paper AdaLN predictor: head dim 25 -> 3 x 8 rotated, 1 free
  assert rope.axis_dim(64) == 20
  assert rope.axis_dim(6) == 2


@pytest.mark.parametrize('head_dim', [25, 16])
def test_reference_layout_matches_numpy(head_dim):
  rng = np.random.default_rng(0)
  pos = rope.grid_positions(2, 3, 4)
  x = rng.normal(size=(pos.shape[0], head_dim))
  got = rope.apply_rope3d(jnp.asarray(x, jnp.float32)[None, :, None, :], jnp.asarray(pos))
  np.testing.assert_allclose(np.asarray(got)[0, :, 0], _numpy_rope_reference(x, pos), atol=2e-5)


def test_clean_layout_matches_numpy_and_preserves_norm():
  rng = np.random.default_rng(1)
  pos = rope.grid_positions(3, 2, 2)
  x = rng.normal(size=(pos.shape[0], 25))
  clean = np.asarray(rope.apply_rope3d(jnp.asarray(x, jnp.float32)[None, :, None],
                                       jnp.asarray(pos), layout='interleaved'))[0, :, 0]
  np.testing.assert_allclose(clean, _numpy_rope_clean(x, pos), atol=2e-5)
  np.testing.assert_allclose(np.linalg.norm(clean, axis=-1), np.linalg.norm(x, axis=-1),
                             rtol=1e-5)
  quirk = _numpy_rope_reference(x, pos)
  # the reference layout is not a rotation: norms change for tokens away from the origin
  assert np.max(np.abs(np.linalg.norm(quirk, axis=-1) - np.linalg.norm(x, axis=-1))) > 1e-2


def test_clean_layout_is_relative():
  """<rope(q, m), rope(k, n)> depends only on m - n for the clean variant."""
  rng = np.random.default_rng(2)
  q, k = rng.normal(size=(2, 1, 1, 1, 24)).astype(np.float32)

  def score(pq, pk):
    rq = rope.apply_rope3d(jnp.asarray(q), jnp.asarray([pq]), layout='interleaved')
    rk = rope.apply_rope3d(jnp.asarray(k), jnp.asarray([pk]), layout='interleaved')
    return float(jnp.sum(rq * rk))

  np.testing.assert_allclose(score((1, 2, 3), (0, 1, 1)), score((4, 5, 6), (3, 4, 4)), rtol=1e-4)


def test_position_zero_is_identity_and_bad_inputs():
  x = jnp.arange(2 * 5 * 1 * 25, dtype=jnp.float32).reshape(2, 5, 1, 25)
  np.testing.assert_array_equal(rope.apply_rope3d(x, jnp.zeros((5, 3), jnp.int32)), x)
  with pytest.raises(ValueError, match='layout'):
    rope.apply_rope3d(x, jnp.zeros((5, 3), jnp.int32), layout='bogus')
  with pytest.raises(ValueError, match='positions'):
    rope.apply_rope3d(x, jnp.zeros((5, 2), jnp.int32))


def test_positions_from_indices_matches_grid():
  grid = (3, 4, 5)
  table = rope.grid_positions(*grid)
  idx = np.array([[0, 7, 59, 23]])
  np.testing.assert_array_equal(rope.positions_from_indices(jnp.asarray(idx), grid)[0],
                                table[idx[0]])
  # row-major (frame, row, col) order
  np.testing.assert_array_equal(table[23], [1, 0, 3])
