"""Success-rate confidence intervals against closed forms (and scipy's own Wilson interval)."""

import math

import numpy as np
import pytest
from scipy import stats

from jepa_jax.planning import confidence

Z95 = 1.959963984540054  # standard normal 0.975 quantile


def wilson_closed_form(k, n, z=Z95):
  p = k / n
  centre = (p + z * z / (2 * n)) / (1 + z * z / n)
  half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
  return centre - half, centre + half


@pytest.mark.parametrize('k,n', [(43, 50), (0, 96), (96, 96), (1, 3), (48, 96)])
def test_wilson_matches_closed_form_and_scipy(k, n):
  ci = confidence.wilson_interval(k, n)
  low, high = wilson_closed_form(k, n)
  assert ci.rate == k / n and ci.n == n and ci.method == 'wilson'
  np.testing.assert_allclose([ci.low, ci.high], [max(low, 0), min(high, 1)], atol=1e-12)
  ref = stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method='wilson')
  np.testing.assert_allclose([ci.low, ci.high], [ref.low, ref.high], atol=1e-9)
  assert ci.low <= ci.rate <= ci.high


def test_wilson_other_confidence_level():
  ci = confidence.wilson_interval(30, 40, confidence=0.9)
  low, high = wilson_closed_form(30, 40, z=1.6448536269514722)
  np.testing.assert_allclose([ci.low, ci.high], [low, high], atol=1e-12)


def test_seed_interval_two_and_three_seeds_closed_form():
  # t quantiles with 1 and 2 degrees of freedom have closed forms:
  # t_1(p) = tan(pi (p - 1/2)), t_2(p) = (2p - 1) / sqrt(2 p (1 - p)).
  p = 0.975
  for rates, t in (([0.82, 0.86], math.tan(math.pi * (p - 0.5))),
                   ([0.82, 0.86, 0.90], (2 * p - 1) / math.sqrt(2 * p * (1 - p)))):
    ci = confidence.seed_interval(rates)
    mean = sum(rates) / len(rates)
    sd = math.sqrt(sum((r - mean) ** 2 for r in rates) / (len(rates) - 1))
    half = t * sd / math.sqrt(len(rates))
    assert ci.method == 't' and ci.n == len(rates)
    np.testing.assert_allclose(ci.rate, mean, atol=1e-12)
    np.testing.assert_allclose([ci.low, ci.high], [max(0, mean - half), min(1, mean + half)],
                               atol=1e-9)


def test_seed_interval_is_clipped_to_unit_range():
  ci = confidence.seed_interval([1.0, 0.9])  # 0.95 +- t_1 * 0.05 = 0.95 +- 0.635
  assert ci.high == 1.0
  np.testing.assert_allclose(ci.low, 0.95 - 12.706204736174705 * 0.05, atol=1e-9)
  same = confidence.seed_interval([0.5, 0.5, 0.5])
  assert same.low == same.high == 0.5


def test_format():
  ci = confidence.RateInterval(0.86, 0.742, 0.93, 50, 'wilson', 0.95)
  assert confidence.format_rate(ci) == '86.0 % [74.2, 93.0]'
  assert str(ci) == '86.0 % [74.2, 93.0]'
  assert confidence.format_rate(ci, digits=0) == '86 % [74, 93]'
  assert ci.as_dict()['n'] == 50


def test_bad_inputs_are_clear_errors():
  with pytest.raises(ValueError, match='successes'):
    confidence.wilson_interval(5, 4)
  with pytest.raises(ValueError, match='episodes'):
    confidence.wilson_interval(0, 0)
  with pytest.raises(ValueError, match='confidence'):
    confidence.wilson_interval(1, 4, confidence=95)
  with pytest.raises(ValueError, match='>= 2 per-seed rates'):
    confidence.seed_interval([0.8])
  with pytest.raises(ValueError, match=r'\[0, 1\]'):
    confidence.seed_interval([86.0, 82.0])
