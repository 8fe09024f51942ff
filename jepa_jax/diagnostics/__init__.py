"""Measuring tools that sit beside the core packages: nothing in a training stage or the
planner imports them.

  benchmark.py        planning throughput of jepa_jax against the PyTorch baseline
                      (`experiments.bench_planning`)
  torch_reference.py  that PyTorch baseline: the reference AdaLN predictor, unroll and CEM
  ceiling.py          the supervised ceiling: the LeWM encoder trained on the true state
                      (`experiments.encoder_ceiling`)
"""
