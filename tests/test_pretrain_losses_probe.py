"""V-JEPA loss pieces against torch / float64 numpy, and the ridge probe against lstsq."""

import numpy as np
import pytest
import torch

from jepa_jax.pretrain import losses
from jepa_jax.representation import probe


def test_normalize_targets_matches_torch_layer_norm():
  x = np.random.default_rng(0).normal(size=(2, 5, 16)).astype(np.float32) * 3 + 1
  expected = torch.nn.functional.layer_norm(torch.from_numpy(x), (16,)).numpy()
  np.testing.assert_allclose(np.asarray(losses.normalize_targets(x)), expected, atol=1e-5)


def test_masked_prediction_loss_matches_float64_loop():
  rng = np.random.default_rng(1)
  targets = rng.normal(size=(3, 10, 4))
  idx = [rng.integers(0, 10, size=(3, 6)), rng.integers(0, 10, size=(3, 2))]
  preds = [rng.normal(size=(3, 6, 4)), rng.normal(size=(3, 2, 4))]
  per_group = []
  for p, ix in zip(preds, idx):
    errs = [abs(p[b, k, d] - targets[b, ix[b, k], d])
            for b in range(3) for k in range(ix.shape[1]) for d in range(4)]
    per_group.append(np.mean(errs))
  got = losses.masked_prediction_loss(
      [np.float32(p) for p in preds], np.float32(targets), [np.int32(i) for i in idx])
  np.testing.assert_allclose(float(got), np.mean(per_group), rtol=1e-5)


def test_context_distance_weights_match_float64_loop():
  """1 / sqrt(distance to the nearest target token) on a (2, 3, 4) grid, against a loop."""
  grid = (2, 3, 4)
  rng = np.random.default_rng(0)
  context, target = [], []
  for _ in range(3):
    order = rng.permutation(np.prod(grid))
    context.append(np.sort(order[:9]))
    target.append(np.sort(order[9:14]))
  context, target = np.array(context), np.array(target)
  weights = np.asarray(losses.context_distance_weights(context, target, grid))
  expected = np.zeros(context.shape)
  for b in range(context.shape[0]):
    for k, c in enumerate(context[b]):
      distances = [np.linalg.norm(np.subtract(np.unravel_index(c, grid),
                                              np.unravel_index(t, grid), dtype=np.float64))
                   for t in target[b]]
      expected[b, k] = 1.0 / np.sqrt(min(distances))
  np.testing.assert_allclose(weights, expected, rtol=1e-6)
  # Weighted L1: the mean over tokens of weight x per-token mean |error|.
  predictions, targets = rng.normal(size=(3, 9, 5)), rng.normal(size=(3, 9, 5))
  np.testing.assert_allclose(
      losses.weighted_l1_loss(predictions, targets, weights),
      np.mean(weights * np.abs(predictions - targets).mean(-1)), rtol=1e-5)


@pytest.mark.parametrize('num_samples,num_features', [(40, 5), (10, 30)])
def test_ridge_fit_matches_augmented_lstsq(num_samples, num_features):
  rng = np.random.default_rng(2)
  x, y, l2 = rng.normal(size=(num_samples, num_features)), rng.normal(size=(num_samples, 2)), 0.7
  # Ridge with free bias == least squares on [X 1; sqrt(l2) I 0] against [Y; 0].
  a = np.block([[x, np.ones((num_samples, 1))],
                [np.sqrt(l2) * np.eye(num_features), np.zeros((num_features, 1))]])
  b = np.concatenate([y, np.zeros((num_features, 2))])
  solution = np.linalg.lstsq(a, b, rcond=None)[0]
  weights, bias = probe.ridge_fit(x, y, l2)
  np.testing.assert_allclose(weights, solution[:-1], atol=1e-9)
  np.testing.assert_allclose(bias, solution[-1], atol=1e-9)


def test_position_probe_separates_informative_from_noise_features():
  rng = np.random.default_rng(3)
  pos = rng.uniform(5, 60, size=(500, 2))
  mixing = rng.normal(size=(2, 20))
  informative = pos @ mixing + 0.01 * rng.normal(size=(500, 20))
  noise = rng.normal(size=(500, 20))
  good = probe.fit_position_probe(informative[:400], pos[:400], informative[400:], pos[400:])
  bad = probe.fit_position_probe(noise[:400], pos[:400], noise[400:], pos[400:])
  assert good['error'] < 0.1
  # Uninformative features: the best a probe can do is about the mean distance to the centre.
  baseline = np.linalg.norm(pos[400:] - pos[:400].mean(0), axis=1).mean()
  assert bad['error'] > 0.9 * baseline


def test_frame_features_pads_to_one_shape_and_pools():
  shapes = set()

  def encode(frames):
    shapes.add(frames.shape)
    # (B, 1, 2, 2, 3) tokens carrying the frame's mean value.
    return np.broadcast_to(frames.mean(axis=(1, 2, 3))[:, None, None, None, None],
                           (len(frames), 1, 2, 2, 3)) + np.arange(3)
  frames = np.arange(5, dtype=np.uint8)[:, None, None, None] * np.ones((5, 4, 4, 3), np.uint8)
  feats = probe.frame_features(encode, frames, batch_size=2)
  assert shapes == {(2, 4, 4, 3)}
  assert feats['patch'].shape == (5, 12) and feats['mean'].shape == (5, 3)
  np.testing.assert_allclose(feats['mean'][:, 0], np.arange(5))


def test_latent_distance_correlation_extremes():
  rng = np.random.default_rng(4)
  pos = rng.uniform(0, 64, size=(300, 2))
  rotation = np.array([[0.6, -0.8], [0.8, 0.6]])
  # An isometry of the positions orders distances exactly; independent noise does not.
  assert probe.latent_distance_correlation(3 * pos @ rotation, pos) == pytest.approx(1.0)
  assert abs(probe.latent_distance_correlation(rng.normal(size=(300, 8)), pos)) < 0.1


def test_position_probe_random_projection_keeps_linear_information():
  rng = np.random.default_rng(5)
  pos = rng.uniform(5, 60, size=(300, 2))
  # 400 features, 2 informative directions plus weak noise; projected to 64 dimensions.
  features = pos @ rng.normal(size=(2, 400)) + 0.01 * rng.normal(size=(300, 400))
  result = probe.fit_position_probe(features[:200], pos[:200], features[200:], pos[200:],
                                    max_features=64)
  assert result['error'] < 0.5
