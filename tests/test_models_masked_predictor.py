"""Stage-1 masked predictor: padding validity and permutation properties (exact consequences of
key masking and of attention without a causal mask)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jepa_jax.models import masked_predictor as mp

GRID = (2, 3, 3)  # 18 tokens


@functools.lru_cache(maxsize=None)
def _setup(pos_embed):
  cfg = mp.MaskedPredictorConfig(embed_dim=24, width=32, depth=2, num_heads=4,
                                 pos_embed=pos_embed, num_mask_tokens=2)
  model = mp.MaskedPredictor(cfg)
  ctx = jax.random.normal(jax.random.key(0), (2, 6, 24))
  cidx = jnp.array([[0, 2, 4, 6, 8, 10], [1, 3, 5, 7, 9, 11]], jnp.int32)
  tidx = jnp.array([[12, 13, 14], [15, 16, 17]], jnp.int32)
  params = jax.jit(model.init, static_argnums=4)(jax.random.key(1), ctx, cidx, tidx, GRID)
  # non-zero mask tokens so that mask_index matters
  params = jax.tree.map(lambda p: p + 0.1 * jax.random.normal(jax.random.key(2), p.shape), params)
  apply = jax.jit(model.apply, static_argnames=('grid', 'mask_index', 'return_context'))
  return params, ctx, cidx, tidx, apply


@pytest.mark.parametrize('pos_embed', ['sincos3d', 'rope3d'])
def test_padded_tokens_change_nothing(pos_embed):
  params, ctx, cidx, tidx, apply = _setup(pos_embed)
  ref = apply(params, ctx[:, :4], cidx[:, :4], tidx[:, :2], grid=GRID)
  # pad: 2 extra (garbage) context tokens and 1 extra target, all marked invalid
  cvalid = jnp.arange(6)[None] < 4
  tvalid = jnp.arange(3)[None] < 2
  got = apply(params, ctx * 1.0, cidx, tidx, grid=GRID, context_valid=jnp.repeat(cvalid, 2, 0),
              target_valid=jnp.repeat(tvalid, 2, 0))
  assert got.shape == (2, 3, 24)
  np.testing.assert_allclose(got[:, :2], ref, atol=1e-5)


@pytest.mark.parametrize('pos_embed', ['sincos3d', 'rope3d'])
def test_context_order_and_positions(pos_embed):
  params, ctx, cidx, tidx, apply = _setup(pos_embed)
  ref = apply(params, ctx, cidx, tidx, grid=GRID)
  perm = jnp.array([3, 0, 5, 1, 4, 2])
  got = apply(params, ctx[:, perm], cidx[:, perm], tidx, grid=GRID)
  np.testing.assert_allclose(got, ref, atol=1e-5)
  moved = apply(params, ctx, cidx, tidx[:, ::-1], grid=GRID)  # predictions follow positions
  np.testing.assert_allclose(moved[:, ::-1], ref, atol=1e-5)
  other = apply(params, ctx, cidx, jnp.minimum(tidx + 1, 17), grid=GRID)
  assert np.abs(np.asarray(other[:, 0] - ref[:, 0])).max() > 1e-3
  second = apply(params, ctx, cidx, tidx, grid=GRID, mask_index=1)
  assert np.abs(np.asarray(second - ref)).max() > 1e-3


def test_return_context_and_errors():
  params, ctx, cidx, tidx, apply = _setup('sincos3d')
  tgt, cpred = apply(params, ctx, cidx, tidx, grid=GRID, return_context=True)
  assert tgt.shape == (2, 3, 24) and cpred.shape == (2, 6, 24)
  model = mp.MaskedPredictor(mp.MaskedPredictorConfig(embed_dim=24, width=32, depth=1,
                                                      num_heads=4))
  with pytest.raises(ValueError, match='embed_dim'):
    model.init(jax.random.key(0), ctx[..., :8], cidx, tidx, GRID)
  with pytest.raises(ValueError, match='pos_embed'):
    mp.MaskedPredictorConfig(pos_embed='learned')


def test_target_offsets_shift_the_mask_token():
  """Offsets equal for every target are a shifted mask token (the mask token is added to the
  target tokens before anything else); per-target offsets move only the token they are on
  when the target sees no other target (one target per row)."""
  params, ctx, cidx, tidx, apply = _setup('sincos3d')
  offset = 0.3 * jax.random.normal(jax.random.key(3), (32,))
  shifted = jax.tree_util.tree_map(lambda p: p, params)
  shifted['params']['mask_tokens'] = params['params']['mask_tokens'] + offset
  want = apply(shifted, ctx, cidx, tidx, grid=GRID)
  got = apply(params, ctx, cidx, tidx, grid=GRID,
              target_offsets=jnp.broadcast_to(offset, (2, 3, 32)))
  np.testing.assert_allclose(got, want, atol=1e-5)
  zero = apply(params, ctx, cidx, tidx, grid=GRID, target_offsets=jnp.zeros((2, 3, 32)))
  np.testing.assert_allclose(zero, apply(params, ctx, cidx, tidx, grid=GRID), atol=1e-6)
