"""95 % confidence intervals of success rates, and their one-line format.

Over the episodes of one run: the Wilson score interval (it stays inside [0, 1] and keeps its
coverage at rates near 0 or 1 and at small E, where the normal approximation does not). Across
training seeds: mean +- t_{(1+c)/2, n-1} * sd / sqrt(n) of the per-seed rates (sd with ddof 1),
clipped to [0, 1]. Quantiles come from scipy (a dependency of jax).
"""

import dataclasses
import math
from typing import Sequence

import numpy as np
from scipy import stats


@dataclasses.dataclass(frozen=True)
class RateInterval:
  """A success rate and its confidence interval, all in [0, 1].

  n: episodes ('wilson') or seeds ('t'); method: 'wilson' or 't'; confidence: e.g. 0.95.
  """
  rate: float
  low: float
  high: float
  n: int
  method: str
  confidence: float

  def as_dict(self) -> dict:
    return dataclasses.asdict(self)

  def __str__(self) -> str:
    return format_rate(self)


def _check_confidence(confidence: float):
  if not 0.0 < confidence < 1.0:
    raise ValueError(f'confidence={confidence} must be in (0, 1), e.g. 0.95')


def wilson_interval(successes: int, episodes: int, confidence: float = 0.95) -> RateInterval:
  """Wilson score interval of `successes` out of `episodes` Bernoulli trials.

  `(p + z^2/2E +- z sqrt(p(1-p)/E + z^2/4E^2)) / (1 + z^2/E)` with p = successes / E and
  z the standard normal `(1 + confidence) / 2` quantile (1.96 for 95 %).
  """
  _check_confidence(confidence)
  if int(episodes) != episodes or episodes < 1:
    raise ValueError(f'episodes={episodes} must be a positive int')
  if int(successes) != successes or not 0 <= successes <= episodes:
    raise ValueError(f'successes={successes} must be an int in [0, episodes={episodes}]')
  n, p = int(episodes), successes / episodes
  z = float(stats.norm.ppf((1.0 + confidence) / 2.0))
  denom = 1.0 + z * z / n
  centre = (p + z * z / (2 * n)) / denom
  half = z / denom * math.sqrt(p * (1.0 - p) / n + z * z / (4 * n * n))
  # The interval always contains p (exactly 0 at k = 0, 1 at k = E): clamp the rounding.
  low, high = min(max(0.0, centre - half), p), max(min(1.0, centre + half), p)
  return RateInterval(p, low, high, n, 'wilson', confidence)


def seed_interval(rates: Sequence[float], confidence: float = 0.95) -> RateInterval:
  """Mean of per-seed success rates (each in [0, 1]) with its t-based confidence interval."""
  _check_confidence(confidence)
  rates = np.asarray(rates, np.float64)
  if rates.ndim != 1 or rates.size < 2:
    raise ValueError(f'seed_interval needs >= 2 per-seed rates, got {rates.size}; for one run '
                     'use wilson_interval over its episodes')
  if not np.all((rates >= 0.0) & (rates <= 1.0)):
    raise ValueError(f'per-seed rates must be in [0, 1]; got {rates.tolist()}')
  n = rates.size
  mean = float(rates.mean())
  t = float(stats.t.ppf((1.0 + confidence) / 2.0, df=n - 1))
  half = t * float(rates.std(ddof=1)) / math.sqrt(n)
  return RateInterval(mean, max(0.0, mean - half), min(1.0, mean + half), n, 't', confidence)


def format_rate(interval: RateInterval, digits: int = 1) -> str:
  """'86.0 % [74.2, 93.0]': the rate and its interval in percent."""
  pct = lambda v: f'{100.0 * v:.{digits}f}'
  return f'{pct(interval.rate)} % [{pct(interval.low)}, {pct(interval.high)}]'
