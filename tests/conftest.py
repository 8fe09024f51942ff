"""Test session setup: 8 fake CPU devices so sharding is exercised on a real multi-device mesh,
and XLA's persistent compilation cache, shared by the xdist workers: many tests build the same
programs in fresh closures (each training run, each resume), which the in-memory jit cache
cannot reuse; the persistent cache, keyed on the compiled program, does (the world-model resume
test: 207 -> 114 s). The slow end-to-end tests are collected first, so that xdist starts them
first instead of leaving one at the tail of the run."""

import os
import tempfile

os.environ['XLA_FLAGS'] = (
    os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=8').strip()
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR',
                      os.path.join(tempfile.gettempdir(), 'jepa_jax_tests_xla_cache'))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0.2')


def pytest_collection_modifyitems(config, items):
  del config
  items.sort(key=lambda item: item.get_closest_marker('slow') is None)  # stable: slow first
