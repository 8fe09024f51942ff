"""The supervised ceiling: a trained encoder must read what its random init cannot."""

import jax
import jax.numpy as jnp
import pytest

from jepa_jax import envs
from jepa_jax.models import vit
from jepa_jax.diagnostics import ceiling

IMAGE_SIZE = 32


def wall_encoder():
  """One global token per 32 px frame (LeWM's Wall default, smaller)."""
  return vit.ViTEncoder(vit.vit_config('tiny', image_size=IMAGE_SIZE, patch_size=IMAGE_SIZE,
                                       tubelet_size=1, width=32, depth=1, num_heads=2,
                                       pos_embed='none'))


def test_supervised_training_reads_the_dot_better_than_the_random_init():
  params, out = ceiling.train_ceiling(wall_encoder(), envs.get('wall'), image_size=IMAGE_SIZE,
                                      num_steps=200, batch_size=64, lr=1e-3,
                                      geometry_frames=400)
  # Wall's dot spans a 65 px grid: the mean predictor misses by about 20 px.
  assert out['probe_error_mean_pool'] < 0.5 * out['probe_error_mean_pool_random_encoder']
  assert out['final_loss'] < 0.2  # standardised targets: 1.0 is the mean predictor's loss
  assert out['train_seconds'] > 0
  fresh = wall_encoder().init(jax.random.PRNGKey(0), jnp.zeros((1, 1, IMAGE_SIZE, IMAGE_SIZE, 3)))
  assert jax.tree.structure(params) == jax.tree.structure(fresh['params'])


def test_rejects_an_empty_budget():
  with pytest.raises(ValueError, match='num_steps'):
    ceiling.train_ceiling(wall_encoder(), envs.get('wall'), image_size=IMAGE_SIZE, num_steps=0)
