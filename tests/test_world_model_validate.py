"""Open-loop rollout error against a hand-computed reference (stand-in world model)."""

import json

import jax.numpy as jnp
import numpy as np
import pytest

from jepa_jax.world_model import model as model_lib
from jepa_jax.world_model import validate


class ShiftModel:
  """Stand-in world model: latent = frame pixels as floats; next latent = latent + mean(action)."""

  def encode(self, params, frames):
    return frames.astype(jnp.float32)[..., :1]

  def embed_proprio(self, params, proprio):
    return proprio * params['scale']

  def unroll(self, params, z0, pe0, actions):
    predict = lambda z, a, pe: (z + jnp.mean(a, -1)[:, :, None, None, None],
                                pe + jnp.mean(a, -1)[..., None])
    return model_lib.sliding_window_unroll(predict, z0, pe0, actions)


def test_rollout_errors_match_numpy():
  rng = np.random.default_rng(0)
  horizon = 3
  frames = rng.integers(0, 5, size=(4, 5, 2, 2, 3), dtype=np.uint8)
  actions = rng.normal(size=(4, 5, 2)).astype(np.float32)
  proprio = rng.normal(size=(4, 5, 2)).astype(np.float32)
  batch = {'observations': frames, 'actions': actions, 'proprio': proprio}
  out = validate.make_rollout_error_fn(ShiftModel(), horizon)({'scale': 2.0}, batch)

  z = frames[..., :1].astype(np.float64)
  pe = 2.0 * proprio.astype(np.float64)
  shift = np.cumsum(actions.mean(-1), 1)  # predicted frame k = frame 0 + sum_{i<k} mean(a_i)
  for k in range(1, horizon + 1):
    pred_z = z[:, 0] + shift[:, k - 1, None, None, None]
    pred_pe = pe[:, 0] + shift[:, k - 1, None]
    np.testing.assert_allclose(out['visual'][k - 1], np.mean((pred_z - z[:, k]) ** 2), rtol=1e-5)
    np.testing.assert_allclose(out['proprio'][k - 1], np.mean((pred_pe - pe[:, k]) ** 2),
                               rtol=1e-5)
    np.testing.assert_allclose(out['constant_visual'][k - 1], np.mean((z[:, 0] - z[:, k]) ** 2),
                               rtol=1e-5)
    np.testing.assert_allclose(out['constant_proprio'][k - 1],
                               np.mean((pe[:, 0] - pe[:, k]) ** 2), rtol=1e-5)
  # The latent scale: per-channel variance over clips and patches of frames 1..H, averaged.
  true = z[:, 1:horizon + 1]
  np.testing.assert_allclose(out['latent_variance'],
                             np.var(true, axis=(0, 2, 3)).mean(-1), rtol=1e-5)


def test_evaluate_averages_and_summary_is_json():
  fn = lambda params, batch: {'visual': jnp.full(2, batch), 'constant_visual': jnp.ones(2),
                              'latent_variance': jnp.full(2, 4.0)}
  result = validate.evaluate(fn, None, [1.0, 3.0])
  np.testing.assert_allclose(result['visual'], [2.0, 2.0])
  summary = validate.summary_entries(result)
  assert summary == {'rollout_error': {'visual': [2.0, 2.0], 'visual_mean': 2.0},
                     'constant_baseline': {'visual': [1.0, 1.0], 'visual_mean': 1.0},
                     'ratio_to_constant': {'visual_mean': 2.0}, 'latent_variance': 4.0,
                     'rollout_error_normalised': {'visual': [0.5, 0.5],
                                                  'constant_visual': [0.25, 0.25]},
                     'beats_constant_every_step': False}
  json.dumps(summary)
  table = validate.format_table(result)
  assert 'mean' in table and '2.000' in table  # ratio model / constant
  assert validate.scalars(result)['rollout_visual_step2'] == 2.0
  with pytest.raises(ValueError, match='no validation batches'):
    validate.evaluate(fn, None, [])


def test_too_short_clips_are_rejected():
  fn = validate.make_rollout_error_fn(ShiftModel(), horizon=4)
  batch = {'observations': np.zeros((1, 3, 2, 2, 3), np.uint8),
           'actions': np.zeros((1, 3, 2), np.float32), 'proprio': np.zeros((1, 3, 2), np.float32)}
  with pytest.raises(ValueError, match='5'):
    fn({'scale': 1.0}, batch)
