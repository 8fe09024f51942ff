"""Test session setup: 8 fake CPU devices so sharding is exercised on a real multi-device mesh,
and XLA's persistent compilation cache, shared by the xdist workers: many tests build the same
programs in fresh closures (each training run, each resume), which the in-memory jit cache
cannot reuse; the persistent cache, keyed on the compiled program, does (the world-model resume
test: 207 -> 114 s). The slow end-to-end tests are collected first, so that xdist starts them
first instead of leaving one at the tail of the run."""

import contextlib
import os
import tempfile

import pytest

os.environ['XLA_FLAGS'] = (
    os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=8').strip()
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR',
                      os.path.join(tempfile.gettempdir(), 'jepa_jax_tests_xla_cache'))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0.2')


def pytest_collection_modifyitems(config, items):
  del config
  items.sort(key=lambda item: item.get_closest_marker('slow') is None)  # stable: slow first


@pytest.fixture
def parsed_flags():
  """`parsed_flags(name='value', ...)`: absl flags set as if parsed from a command line, and
  restored after the test. Unlike `flags.FLAGS(argv)` it does not validate the flags of other
  binaries that earlier tests imported into the same global FLAGS (their required flags would
  fail the parse, depending on which tests an xdist worker ran before)."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  from absl.testing import flagsaver  # pylint: disable=g-import-not-at-top
  with contextlib.ExitStack() as stack:
    def set_flags(**values):
      flags.FLAGS.mark_as_parsed()
      stack.enter_context(flagsaver.as_parsed(**values))
    try:
      yield set_flags
    finally:
      stack.close()
      flags.FLAGS.unparse_flags()
