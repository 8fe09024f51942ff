"""Action labels for the unlabelled trajectories, read off their proprio or frozen latent by an
inverse dynamics model (`world_model.pseudo_labels`, `lewm.pseudo_labels`).

With `labeled_fraction` < 1, stage 1 learns from every trajectory's frames but stage 2 would
see only the labelled ones. An inverse dynamics model (IDM), (x_t, x_{t+1} - x_t) -> the
z-scored env action a_t between consecutive frames, is fit on the labelled trajectories and
labels the others; stage 2 then trains on every trajectory. This is VPT's recipe (Baker et al.
2022: a small labelled set, an IDM, a large unlabelled one). x is the agent's proprioception
when the world model reads it (the state the actions move: PointMaze's velocity gives its
force), else the frozen stage-1 latent (pixels only). One env step rather than one model step
(frameskip): PointMaze's controls are i.i.d. per env step, so five of them are not identifiable
from the two ends of a model step, and on Wall the per-step fit is better too (docs/stage1.md).

Shapes: L env steps per trajectory (L + 1 frames), A env action dims, X the IDM's features of
one frame (the flattened latent h * w * D, or P proprio dims).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from jepa_jax.data import pipeline
from jepa_jax.data import stats as stats_lib
from jepa_jax.data import trajectories
from jepa_jax.representation import probe

# The IDM and its fit: an MLP of two hidden layers, early-stopped on held-out labelled
# trajectories (with 50 labelled Wall trajectories it overfits after ~500 steps).
HIDDEN_WIDTH = 256
HIDDEN_LAYERS = 2
BATCH_SIZE = 256
MAX_STEPS = 4000
EVAL_EVERY = 100
LEARNING_RATE = 1e-3
WEIGHT_DECAY = 1e-2
HOLDOUT_FRACTION = 0.2


class InverseDynamics(nn.Module):
  """Standardised inputs (..., 2X) -> z-scored env actions (..., A)."""
  action_dim: int

  @nn.compact
  def __call__(self, x):
    for _ in range(HIDDEN_LAYERS):
      x = nn.gelu(nn.Dense(HIDDEN_WIDTH)(x))
    return nn.Dense(self.action_dim)(x)


def inverse_inputs(features: np.ndarray) -> np.ndarray:
  """Per-frame features (N, L+1, X) -> IDM inputs of each env step (N, L, 2X) float32: the
  step's first frame and the change to the next."""
  first, change = features[:, :-1], np.diff(features, axis=1)
  return np.concatenate([first, change], axis=-1).astype(np.float32)


def r_squared(pred: np.ndarray, target: np.ndarray, reference: np.ndarray | None = None
              ) -> float:
  """1 - MSE / variance (mean over the last axis's channels), float64: 0 is the score of the
  mean, 1 perfect. The variance is that of `reference` (default: `target`): a few smooth
  trajectories vary less than the data set they come from."""
  pred, target = np.asarray(pred, np.float64), np.asarray(target, np.float64)
  reference = target if reference is None else np.asarray(reference, np.float64)
  variance = np.mean(np.var(reference.reshape(-1, reference.shape[-1]), axis=0))
  return float(1.0 - np.mean(np.square(pred - target)) / variance)


@dataclasses.dataclass(frozen=True)
class FittedInverseModel:
  """An IDM with its input standardisation; `predict` maps raw inputs (..., I) to (..., A)."""
  params: dict
  input_mean: np.ndarray
  input_std: np.ndarray
  action_dim: int
  steps: int  # the early-stopped step
  holdout_r2: float

  def predict(self, inputs: np.ndarray) -> np.ndarray:
    x = (np.asarray(inputs, np.float32) - self.input_mean) / self.input_std
    return np.asarray(_apply(self.action_dim, self.params, x.reshape(-1, x.shape[-1]))).reshape(
        x.shape[:-1] + (self.action_dim,))


@functools.partial(jax.jit, static_argnums=0)
def _apply(action_dim: int, params: dict, x: jax.Array) -> jax.Array:
  """The IDM's forward pass, compiled once per action width and input shape (not per call)."""
  return InverseDynamics(action_dim).apply(params, x)


def fit_inverse_model(inputs: np.ndarray, targets: np.ndarray, seed: int) -> FittedInverseModel:
  """Fits the IDM on labelled trajectories: inputs (N, L, I), targets z-scored (N, L, A), N >= 2.

  The last `HOLDOUT_FRACTION` of the trajectories (at least one) are held out; training keeps
  the parameters of the evaluation with the lowest held-out error (every `EVAL_EVERY` steps).
  holdout_r2 scores them against the variance of every labelled target.
  """
  n = len(inputs)
  if n < 2:
    raise ValueError(f'pseudo labels need at least 2 labelled trajectories to fit and check the '
                     f'inverse dynamics model, got {n}; raise labeled_fraction or turn '
                     'pseudo_labels off (world_model.pseudo_labels / lewm.pseudo_labels)')
  num_holdout = max(1, round(HOLDOUT_FRACTION * n))
  fit_x = inputs[:-num_holdout].reshape(-1, inputs.shape[-1])
  fit_y = targets[:-num_holdout].reshape(-1, targets.shape[-1])
  hold_x = inputs[-num_holdout:].reshape(-1, inputs.shape[-1])
  hold_y = targets[-num_holdout:].reshape(-1, targets.shape[-1])
  mean = fit_x.mean(0)
  std = fit_x.std(0) + 1e-6  # constant channels (e.g. a padded token) stay finite
  fit_x, hold_x = (fit_x - mean) / std, (hold_x - mean) / std

  model = InverseDynamics(targets.shape[-1])
  key = jax.random.PRNGKey(seed)
  params = model.init(key, fit_x[:1])
  tx = optax.adamw(LEARNING_RATE, weight_decay=WEIGHT_DECAY)
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state, x, y):
    grads = jax.grad(lambda p: jnp.mean(jnp.square(model.apply(p, x) - y)))(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  holdout_mse = jax.jit(lambda p: jnp.mean(jnp.square(model.apply(p, hold_x) - hold_y)))
  rng = np.random.default_rng(seed)
  best = (float(holdout_mse(params)), 0, params)
  for i in range(1, MAX_STEPS + 1):
    rows = rng.integers(0, len(fit_x), BATCH_SIZE)
    params, opt_state = step(params, opt_state, fit_x[rows], fit_y[rows])
    if i % EVAL_EVERY == 0:
      error = float(holdout_mse(params))
      if error < best[0]:
        best = (error, i, params)
  _, best_step, best_params = best
  fitted = FittedInverseModel(params=jax.device_get(best_params), input_mean=mean,
                              input_std=std, action_dim=targets.shape[-1], steps=best_step,
                              holdout_r2=0.0)
  holdout_r2 = r_squared(fitted.predict(inputs[-num_holdout:]), targets[-num_holdout:], targets)
  return dataclasses.replace(fitted, holdout_r2=holdout_r2)


def read_split(encode: Callable[[np.ndarray], np.ndarray] | None, dataset_dir: str,
               split: str, indices: range, stats: dict, frames_per_batch: int = 256
               ) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
  """(frozen latents (N, L+1, F) f32 or None without `encode`, z-scored actions (N, L, A),
  z-scored proprio (N, L+1, P)) of the split's trajectories `indices`, read a few at a time (a
  whole split's frames need not fit in memory).

  encode: uint8 frames (B, S, S, 3) -> tokens (B, ..., D).
  """
  source = trajectories.open_builder(dataset_dir).as_data_source(split)
  latents, actions, proprio = [], [], []
  per_read = max(1, frames_per_batch // 8)
  for first in range(indices.start, indices.stop, per_read):
    chunk = [source[i] for i in range(first, min(first + per_read, indices.stop))]
    if encode is not None:
      frames = np.concatenate([e['observations'] for e in chunk])
      features = probe.frame_features(encode, frames, frames_per_batch)['patch']
      latents.append(features.reshape(len(chunk), -1, features.shape[-1]))
    actions += [(e['actions'] - stats['action_mean']) / stats['action_std'] for e in chunk]
    proprio += [(e['proprio'] - stats['proprio_mean']) / stats['proprio_std'] for e in chunk]
  return (np.concatenate(latents) if latents else None), np.stack(actions), np.stack(proprio)


def pseudo_label(encode: Callable[[np.ndarray], np.ndarray] | None, dataset_dir: str, *,
                 num_labelled: int, use_proprio: bool, seed: int) -> tuple[np.ndarray, dict]:
  """Labels the training trajectories after the first `num_labelled` with the actions an IDM fit
  on those reads off their frames.

  Args:
    encode: uint8 frames (B, S, S, 3) -> the frozen encoder's tokens (B, ..., D); read when
      `use_proprio` is False.
    dataset_dir: the dataset folder; its validation split (labelled) scores the IDM.
    num_labelled: the labelled training trajectories (data.pipeline.labeled_trajectories).
    use_proprio: the IDM reads proprio instead of the latent (when the model reads proprio); a
      pixels-only model stays pixels only.
    seed: the IDM's initialisation and batch order.

  Returns:
    (raw actions f32 (M, L, A) for the M unlabelled training trajectories, in the dataset's
    units; a report: the IDM's R^2 on held-out labelled trajectories and on the validation
    split, 0 = predicting the mean action).
  """
  builder = trajectories.open_builder(dataset_dir)
  num_train = len(builder.as_data_source('train'))
  num_val = len(builder.as_data_source('validation'))
  if not 0 < num_labelled < num_train:
    raise ValueError(f'pseudo labels need unlabelled training trajectories: {num_labelled} of '
                     f'{num_train} are labelled')
  stats = stats_lib.load_stats(dataset_dir)

  def read(split, indices):  # -> (IDM inputs (N, L, 2X), z-scored actions (N, L, A))
    latents, actions, proprio = read_split(None if use_proprio else encode, dataset_dir, split,
                                           indices, stats)
    return inverse_inputs(proprio if use_proprio else latents), actions

  fitted = fit_inverse_model(*read('train', range(num_labelled)), seed)
  val_x, val_actions = read('validation', range(num_val))
  unlabelled = range(num_labelled, num_train)
  unlabelled_x, _ = read('train', unlabelled)  # their stored actions are never used
  actions = fitted.predict(unlabelled_x) * stats['action_std'] + stats['action_mean']
  report = {
      'labelled_trajectories': num_labelled,
      'pseudo_labelled_trajectories': len(unlabelled),
      'inverse_model_inputs': 'proprio' if use_proprio else 'latent',
      'inverse_model_steps': fitted.steps,
      'inverse_model_holdout_r2': fitted.holdout_r2,
      'inverse_model_validation_r2': r_squared(fitted.predict(val_x), val_actions),
  }
  return actions.astype(np.float32), report


def training_labels(config, stage_config, dataset_dir: str, *, use_proprio: bool,
                    encode: Callable[[np.ndarray], np.ndarray] | None = None
                    ) -> tuple[int, np.ndarray | None, dict]:
  """What a stage that reads actions (stage 2, LeWM) trains on: (labelled trajectories, the raw
  pseudo actions (M, L, A) of the unlabelled ones or None, the IDM's report or {}).

  None and {} unless `stage_config.pseudo_labels` is set (a PredictorTrainingConfig: the
  `world_model` or `lewm` section) and `labeled_fraction` leaves trajectories unlabelled.
  encode: the frozen encoder; None for LeWM, which has none before it trains (LeWMConfig
  requires proprio with pseudo labels).
  """
  section = stage_config.SECTION
  num_labelled = pipeline.labeled_trajectories(config)
  num_train = trajectories.as_data_config(config.data).num_train_trajectories
  if not stage_config.pseudo_labels or num_labelled >= num_train:
    return num_labelled, None, {}
  actions, report = pseudo_label(encode, dataset_dir, num_labelled=num_labelled,
                                 use_proprio=use_proprio, seed=int(config.seed))
  logging.info('%s: pseudo labels for %d unlabelled trajectories from %s; inverse model R^2 %.3f '
               'on the validation split (0 = the mean action)', section, len(actions),
               report['inverse_model_inputs'], report['inverse_model_validation_r2'])
  return num_labelled, actions, report
