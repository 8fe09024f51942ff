"""Pseudo action labels (`world_model.pseudo_labels`, jepa_jax/world_model/pseudo_labels.py):
the inverse dynamics model's inputs and score against loops and closed forms, its fit on a
known inverse map and on unrelated targets, and the labels it gives a generated Wall dataset's
unlabelled trajectories against their withheld stored actions."""

import jax
import numpy as np
import pytest

from jepa_jax.data import trajectories
from jepa_jax.world_model import pseudo_labels


def test_inverse_inputs_are_each_frame_and_its_change_to_the_next():
  features = np.random.default_rng(0).normal(size=(3, 6, 4))
  inputs = pseudo_labels.inverse_inputs(features)
  assert inputs.shape == (3, 5, 8) and inputs.dtype == np.float32
  for n in range(3):
    for t in range(5):
      np.testing.assert_allclose(inputs[n, t, :4], features[n, t], rtol=1e-6)
      np.testing.assert_allclose(inputs[n, t, 4:], features[n, t + 1] - features[n, t],
                                 rtol=1e-5, atol=1e-6)


def test_r_squared_closed_forms():
  target = np.random.default_rng(1).normal(size=(4, 10, 2)) * [1.0, 3.0] + [5.0, -2.0]
  assert pseudo_labels.r_squared(target, target) == pytest.approx(1.0)
  mean = np.broadcast_to(target.reshape(-1, 2).mean(0), target.shape)
  assert pseudo_labels.r_squared(mean, target) == pytest.approx(0.0, abs=1e-12)
  # The variance of a reference set instead: here 4 times the target's, so R^2 = 3/4.
  assert pseudo_labels.r_squared(mean, target, 2 * target) == pytest.approx(0.75)
  # An error of two standard deviations in every channel: MSE = 4 mean(var), R^2 = -3.
  std = target.reshape(-1, 2).std(0)
  assert pseudo_labels.r_squared(target + 2 * std, target) == pytest.approx(-3.0)


def _random_walks(seed, n=24, length=30):
  """Features (n, L+1, 3): a 2-D position walked by the actions (n, L, 2), plus a distractor
  channel; actions are the position changes (a perfectly identifiable inverse map)."""
  rng = np.random.default_rng(seed)
  actions = rng.normal(size=(n, length, 2)).astype(np.float32)
  positions = np.concatenate([np.zeros((n, 1, 2)), np.cumsum(actions, axis=1)], axis=1)
  distractor = rng.normal(size=(n, length + 1, 1))
  return np.concatenate([positions, distractor], -1).astype(np.float32), actions


def test_fit_recovers_an_identifiable_inverse_map_and_not_noise():
  features, actions = _random_walks(0)
  fitted = pseudo_labels.fit_inverse_model(pseudo_labels.inverse_inputs(features), actions, 0)
  test_features, test_actions = _random_walks(1)
  test_inputs = pseudo_labels.inverse_inputs(test_features)
  assert pseudo_labels.r_squared(fitted.predict(test_inputs), test_actions) > 0.95
  # The reported held-out score is the fitted model's on the last 20 % of the trajectories,
  # against the variance of every labelled action.
  held = slice(len(features) - 5, None)  # round(0.2 * 24) = 5
  assert fitted.holdout_r2 == pytest.approx(pseudo_labels.r_squared(
      fitted.predict(pseudo_labels.inverse_inputs(features)[held]), actions[held], actions))
  # Targets unrelated to the frames: early stopping keeps the held-out score near 0.
  noise = np.random.default_rng(2).normal(size=actions.shape).astype(np.float32)
  unrelated = pseudo_labels.fit_inverse_model(pseudo_labels.inverse_inputs(features), noise, 0)
  assert unrelated.holdout_r2 < 0.1
  assert pseudo_labels.r_squared(unrelated.predict(test_inputs), test_actions) < 0.1


def test_fit_needs_two_labelled_trajectories():
  features, actions = _random_walks(0, n=1)
  with pytest.raises(ValueError, match='at least 2 labelled trajectories'):
    pseudo_labels.fit_inverse_model(pseudo_labels.inverse_inputs(features), actions, 0)


DATA = dict(image_size=16, num_train_trajectories=16, num_validation_trajectories=8,
            trajectory_length=30)


@pytest.fixture(scope='module')
def dataset(tmp_path_factory):
  return trajectories.generate(str(tmp_path_factory.mktemp('data')), 'wall', DATA, seed=5)


def _mean_pixels(frames):
  """A fixed 'encoder' (B, S, S, 3) -> (B, 1, 1, 1, 3): each channel's mean (no learning)."""
  return jax.numpy.mean(frames.astype(jax.numpy.float32), axis=(1, 2))[:, None, None, None]


def test_wall_pseudo_labels_match_the_withheld_actions(dataset):
  # Wall's proprio is the dot's position and an action its intended step, so an IDM on proprio
  # should recover the unlabelled trajectories' stored actions (which it never reads).
  actions, report = pseudo_labels.pseudo_label(
      _mean_pixels, dataset, num_labelled=8, use_proprio=True, seed=0)
  withheld = trajectories.load_trajectories(dataset, 'train')['actions'][8:]
  assert actions.shape == withheld.shape == (8, 30, 2) and actions.dtype == np.float32
  assert pseudo_labels.r_squared(actions, withheld) > 0.8
  assert report['labelled_trajectories'] == 8
  assert report['pseudo_labelled_trajectories'] == 8
  assert report['inverse_model_inputs'] == 'proprio'
  assert report['inverse_model_validation_r2'] > 0.6
  # A channel-mean "latent" of 16 px frames barely shows a 1-px dot: the same IDM on it
  # recovers little, and the report says so.
  _, blind = pseudo_labels.pseudo_label(_mean_pixels, dataset, num_labelled=8,
                                        use_proprio=False, seed=0)
  assert blind['inverse_model_inputs'] == 'latent'
  assert blind['inverse_model_validation_r2'] < 0.3


def test_pseudo_labels_need_unlabelled_trajectories(dataset):
  with pytest.raises(ValueError, match='16 of 16 are labelled'):
    pseudo_labels.pseudo_label(_mean_pixels, dataset, num_labelled=16, use_proprio=True, seed=0)
