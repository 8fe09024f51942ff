"""Normalisation statistics of a trajectory dataset (per-dimension mean/std of actions and proprio).

Computed once, over the train split, when the dataset is generated, and stored next to it as
`stats.json`. Every stage z-scores actions and proprio with these numbers:
`x_norm = (x - mean) / std`.
"""

import json
import os

import numpy as np

STATS_FILENAME = 'stats.json'
STATS_KEYS = ('action_mean', 'action_std', 'proprio_mean', 'proprio_std')


class MomentAccumulator:
  """Streaming per-dimension mean and (population, ddof=0) standard deviation.

  Sums are kept in float64 so that chunks of float32 data of any count can be added.
  """

  def __init__(self, dim: int):
    self.count = 0
    self._sum = np.zeros(dim, np.float64)
    self._sum_sq = np.zeros(dim, np.float64)

  def add(self, values: np.ndarray) -> None:
    """Adds `values` of shape (..., dim); every leading index is one sample."""
    values = np.asarray(values, np.float64).reshape(-1, self._sum.shape[0])
    self.count += values.shape[0]
    self._sum += values.sum(axis=0)
    self._sum_sq += np.square(values).sum(axis=0)

  def mean_std(self) -> tuple[np.ndarray, np.ndarray]:
    if self.count == 0:
      raise ValueError('no samples were added; cannot compute normalisation statistics')
    mean = self._sum / self.count
    var = np.maximum(self._sum_sq / self.count - np.square(mean), 0.0)
    return mean, np.sqrt(var)


def write_stats(dataset_dir: str, stats: dict) -> str:
  """Writes `stats` ({key: array (D,)} for STATS_KEYS, plus JSON extras) atomically.

  The file appears complete or not at all (temporary file + os.replace), because a dataset
  counts as complete only when its stats.json exists.
  """
  payload = {k: np.asarray(v).tolist() if k in STATS_KEYS else v for k, v in stats.items()}
  path = os.path.join(dataset_dir, STATS_FILENAME)
  tmp = f'{path}.tmp.{os.getpid()}'
  with open(tmp, 'w') as f:
    json.dump(payload, f, indent=2)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)
  return path


def load_stats(dataset_dir: str) -> dict[str, np.ndarray]:
  """Returns {action_mean, action_std, proprio_mean, proprio_std}: float32 arrays (D,)."""
  path = os.path.join(dataset_dir, STATS_FILENAME)
  if not os.path.exists(path):
    raise ValueError(
        f'no normalisation stats at {path}: the dataset is missing or incomplete; '
        'run `python -m experiments.generate_data --config=...` to (re)generate it')
  with open(path) as f:
    payload = json.load(f)
  missing = [k for k in STATS_KEYS if k not in payload]
  if missing:
    raise ValueError(
        f'{path} lacks {missing}; regenerate the dataset with experiments.generate_data')
  return {k: np.asarray(payload[k], np.float32) for k in STATS_KEYS}
