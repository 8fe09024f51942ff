"""Linear probe of a frozen encoder: closed-form ridge regression to the dot position.

The probe measures whether the latents locate the Wall dot (what stage-3 planning needs):
features of single frames -> the state's position, fit on train-split frames, scored on
validation-split frames as the mean Euclidean error in the environment's `distance_unit`.

All linear algebra is float64 numpy on the host; it is small (a few thousand frames).
"""

from typing import Callable, Sequence

import numpy as np

# Ridge strengths relative to the number of fit samples (features are standardised, so the
# Gram diagonal is ~N); picked on a held-out slice of the train frames.
DEFAULT_RELATIVE_L2 = tuple(10.0 ** np.arange(-5, 3))


def ridge_fit_path(features: np.ndarray, targets: np.ndarray, l2s: Sequence[float]
                   ) -> list[tuple[np.ndarray, np.ndarray]]:
  """Closed-form ridge regression with an unpenalised bias, for several strengths at once.

  Minimises `|X w + b - Y|^2 + l2 |w|^2` for each `l2`. One eigendecomposition of the
  centred Gram matrix serves every strength: the primal `X^T X` when `F <= N`, else the dual
  `X X^T` (then `w = X^T (X X^T + l2 I)^-1 Y`).

  Args:
    features: `(N, F)` inputs.
    targets: `(N, P)` regression targets.
    l2s: ridge strengths, each > 0.

  Returns:
    One `(weights (F, P), bias (P,))` float64 pair per strength.
  """
  x = np.asarray(features, np.float64)
  y = np.asarray(targets, np.float64)
  if x.ndim != 2 or y.ndim != 2 or len(x) != len(y):
    raise ValueError(f'ridge_fit needs features (N, F) and targets (N, P), got {x.shape} '
                     f'and {y.shape}')
  if min(l2s) <= 0:
    raise ValueError(f'ridge strengths must be > 0, got {list(l2s)}')
  x_mean, y_mean = x.mean(0), y.mean(0)
  xc, yc = x - x_mean, y - y_mean
  primal = xc.shape[1] <= xc.shape[0]
  eigvals, eigvecs = np.linalg.eigh(xc.T @ xc if primal else xc @ xc.T)
  projected = eigvecs.T @ (xc.T @ yc if primal else yc)
  fits = []
  for l2 in l2s:
    solved = eigvecs @ (projected / (eigvals + l2)[:, None])
    weights = solved if primal else xc.T @ solved
    fits.append((weights, y_mean - x_mean @ weights))
  return fits


def ridge_fit(features: np.ndarray, targets: np.ndarray, l2: float
              ) -> tuple[np.ndarray, np.ndarray]:
  """`ridge_fit_path` for one strength: `(weights (F, P), bias (P,))`."""
  return ridge_fit_path(features, targets, [l2])[0]


def mean_distance(predictions: np.ndarray, targets: np.ndarray) -> float:
  """Mean Euclidean distance between rows of `(N, P)` arrays."""
  return float(np.linalg.norm(np.asarray(predictions) - np.asarray(targets), axis=-1).mean())


def _standardize(train: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
  mean = train.mean(0)
  std = train.std(0) + 1e-6  # constant features (e.g. dead units) stay finite
  return [(a - mean) / std for a in (train,) + others]


def fit_position_probe(train_features: np.ndarray, train_positions: np.ndarray,
                       eval_features: np.ndarray, eval_positions: np.ndarray, *,
                       relative_l2: Sequence[float] = DEFAULT_RELATIVE_L2,
                       holdout_fraction: float = 0.2, max_features: int = 2048,
                       seed: int = 0) -> dict:
  """Fits a ridge probe on train frames and reports its error on evaluation frames.

  The ridge strength is chosen on the last `holdout_fraction` of the train frames (pass
  them grouped by trajectory so the holdout is other trajectories), then the probe is refit
  on all train frames. Standardised features wider than `max_features` (e.g. flattened
  patch tokens of a ViT-S at 224 px: 75k) are first mapped by a seeded Gaussian random
  projection to `max_features` dimensions, which keeps the solve cubic in `max_features`
  rather than in the frame count.

  Args:
    train_features: `(N, F)` frozen features of train-split frames.
    train_positions: `(N, 2)` positions in the environment's distance unit.
    eval_features, eval_positions: the same for validation-split frames.
    relative_l2: candidate ridge strengths, in units of the number of fit frames.
    holdout_fraction: share of the train frames used to choose the strength.

  Returns:
    `{'error': mean Euclidean error on the eval frames (the positions' unit), 'l2': chosen
      relative strength, 'train_error': error on the train frames}`.
  """
  train_features = np.asarray(train_features, np.float64)
  eval_features = np.asarray(eval_features, np.float64)
  if train_features.shape[1:] != eval_features.shape[1:]:
    raise ValueError(f'train and eval features differ in shape: {train_features.shape} vs '
                     f'{eval_features.shape}')
  num_fit = int(round(len(train_features) * (1 - holdout_fraction)))
  if not 0 < num_fit < len(train_features):
    raise ValueError(f'holdout_fraction={holdout_fraction} leaves no fit or holdout frames out '
                     f'of {len(train_features)}')
  if train_features.shape[1] > max_features:
    train_features, eval_features = _standardize(train_features, eval_features)
    projection = np.random.default_rng(seed).normal(
        size=(train_features.shape[1], max_features)) / np.sqrt(max_features)
    train_features, eval_features = train_features @ projection, eval_features @ projection
  fit_x, hold_x = _standardize(train_features[:num_fit], train_features[num_fit:])
  fit_y, hold_y = train_positions[:num_fit], train_positions[num_fit:]
  holdout_errors = [mean_distance(hold_x @ weights + bias, hold_y) for weights, bias in
                    ridge_fit_path(fit_x, fit_y, [alpha * num_fit for alpha in relative_l2])]
  alpha = relative_l2[int(np.argmin(holdout_errors))]

  train_x, eval_x = _standardize(train_features, eval_features)
  weights, bias = ridge_fit(train_x, train_positions, alpha * len(train_x))
  return {
      'error': mean_distance(eval_x @ weights + bias, eval_positions),
      'train_error': mean_distance(train_x @ weights + bias, train_positions),
      'l2': float(alpha),
  }


def frame_features(encode: Callable[[np.ndarray], np.ndarray], frames: np.ndarray,
                   batch_size: int = 256) -> dict[str, np.ndarray]:
  """Frozen features of single frames, keeping and dropping spatial layout.

  Args:
    encode: frames uint8 `(B, S, S, 3)` -> patch tokens `(B, ..., D)` (e.g. `(B, 1, h, w, D)`).
    frames: uint8 `(N, S, S, 3)`.

  Returns:
    `{'patch': (N, h*w*D) flattened patch tokens, 'mean': (N, D) mean-pooled tokens}`, float32.
  """
  patch, pooled = [], []
  for start in range(0, len(frames), batch_size):
    chunk = frames[start:start + batch_size]
    # Pad the last chunk to the full batch so a jitted `encode` compiles once.
    padded = np.concatenate([chunk, np.repeat(chunk[-1:], batch_size - len(chunk), 0)])
    tokens = np.asarray(encode(padded), np.float32)[:len(chunk)]
    tokens = tokens.reshape(len(tokens), -1, tokens.shape[-1])
    patch.append(tokens.reshape(len(tokens), -1))
    pooled.append(tokens.mean(axis=1))
  return {'patch': np.concatenate(patch), 'mean': np.concatenate(pooled)}


def _ranks(values: np.ndarray) -> np.ndarray:
  ranks = np.empty(len(values))
  ranks[np.argsort(values, kind='stable')] = np.arange(len(values))
  return ranks


def latent_distance_correlation(features: np.ndarray, positions: np.ndarray, *,
                                num_pairs: int = 5000, seed: int = 0) -> float:
  """Spearman correlation between latent and dot distances over random frame pairs.

  A planning cost compares latents by distance; it guides the search only if frames whose
  dots are farther apart have farther latents. 1 = distances perfectly ordered, ~0 = unrelated.

  Args:
    features: `(N, F)` frame latents (e.g. flattened patch tokens).
    positions: `(N, 2)` positions in the environment's distance unit.
  """
  features = np.asarray(features, np.float64)
  positions = np.asarray(positions, np.float64)
  if len(features) != len(positions) or len(features) < 2:
    raise ValueError(f'need >= 2 frames with one position each, got {features.shape} features '
                     f'and {positions.shape} positions')
  rng = np.random.default_rng(seed)
  first = rng.integers(0, len(features), num_pairs)
  second = rng.integers(0, len(features), num_pairs)
  latent = np.linalg.norm(features[first] - features[second], axis=-1)
  dot = np.linalg.norm(positions[first] - positions[second], axis=-1)
  return float(np.corrcoef(_ranks(latent), _ranks(dot))[0, 1])
