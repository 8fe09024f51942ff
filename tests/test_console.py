"""Quiet library logs, progress lines and result lines (jepa_jax.console)."""

import io
import logging as std_logging
import _thread
import os
import re
import sys
import threading
import time

from absl import logging
import jax.numpy as jnp
import pytest

from jepa_jax import checkpoint, console, outputs


@pytest.fixture
def clean_console():
  """Undoes `console.setup`: absl verbosity, the handler filter, the stored verbosity, sys.stderr
  and the thread exception hook."""
  handler = logging.get_absl_handler()
  old_verbosity = logging.get_verbosity()
  old_stderr, old_excepthook = sys.stderr, threading.excepthook
  yield
  for f in [f for f in handler.filters if isinstance(f, console._LibraryLogFilter)]:
    handler.removeFilter(f)
  logging.set_verbosity(old_verbosity)
  console._verbosity = 0
  sys.stderr, threading.excepthook = old_stderr, old_excepthook


@pytest.fixture
def absl_lines(capsys, clean_console):
  """Log lines that absl's handler (as `app.run` installs it on the root logger) prints."""
  handler = logging.get_absl_handler()
  root = std_logging.getLogger()
  attached = handler not in root.handlers
  if attached:
    root.addHandler(handler)
  capsys.readouterr()
  yield lambda: [l for l in capsys.readouterr().err.splitlines() if re.match(r'[IWEF]\d{4} ', l)]
  if attached:
    root.removeHandler(handler)


def _record(level, pathname, msg='message'):
  return std_logging.LogRecord('absl', level, pathname, 1, msg, None, None)


@pytest.mark.parametrize('verbosity, own_info, library_info, library_warning, noise', [
    (0, False, False, True, False),
    (1, True, False, True, False),
    (2, True, True, True, True),
])
def test_filter_levels(verbosity, own_info, library_info, library_warning, noise):
  own = os.path.join(os.path.dirname(console.__file__), 'training.py')
  library = os.path.join(os.path.dirname(std_logging.__file__), 'site-packages', 'orbax', 'x.py')
  keep = console._LibraryLogFilter(verbosity).filter
  assert keep(_record(std_logging.INFO, own)) == own_info
  assert keep(_record(std_logging.INFO, library)) == library_info
  assert keep(_record(std_logging.WARNING, library)) == library_warning
  assert keep(_record(std_logging.WARNING, own))  # our warnings always show
  assert keep(_record(std_logging.ERROR, library))
  tfds_noise = _record(std_logging.WARNING, library, 'Using custom data configuration: x')
  assert keep(tfds_noise) == noise
  # A record with a traceback: a library's needs verbosity 1 (orbax's background threads log
  # every failure they pass on with one), ours always shows.
  traceback = (ValueError, ValueError('x'), None)
  library_error = _record(std_logging.ERROR, library)
  library_error.exc_info = traceback
  assert keep(library_error) == (verbosity >= 1)
  own_error = _record(std_logging.ERROR, own)
  own_error.exc_info = traceback
  assert keep(own_error)


def test_orbax_save_is_silent_by_default_and_loud_at_verbosity_2(tmp_path, absl_lines):
  """Real Orbax INFO lines (dozens per save/load) go through the same handler as app.run's."""
  console.setup(0)
  checkpoint.save_model(tmp_path / 'a', kind='x', config={}, params={'w': jnp.zeros(3)})
  checkpoint.load_model(tmp_path / 'a')
  logging.warning('kept warning')
  quiet = absl_lines()
  assert len(quiet) == 1 and quiet[0].endswith('kept warning')
  console.setup(2)
  checkpoint.save_model(tmp_path / 'b', kind='x', config={}, params={'w': jnp.zeros(3)})
  assert len(absl_lines()) > 10  # orbax's INFO is back


def _meter(file, **kwargs):
  with console.Progress(10, 'stage 1', file=file, **kwargs) as progress:
    for step in range(10):
      progress.update()
      progress.set_postfix(loss=1.0 / (step + 1))
  return file.getvalue()


def test_progress_off_a_terminal_prints_whole_lines_at_the_interval():
  lines = _meter(io.StringIO(), interval_s=0.0).splitlines()
  assert len(lines) == 11 and '\r' not in ''.join(lines)  # + the final metrics at close
  assert re.fullmatch(r'stage 1: 3/10 \(30%\) \[00:00<00:00, .*step/s, loss=0\.5\]', lines[2])
  assert lines[-1].startswith('stage 1: 10/10 (100%) [00:00<00:00, ')
  assert lines[-1].endswith('loss=0.1]')
  # A long interval: only the final line, so logs stay short.
  only = _meter(io.StringIO(), interval_s=3600).splitlines()
  assert len(only) == 1 and only[0].startswith('stage 1: 10/10 (100%)')
  assert only[0].endswith('loss=0.1]')


def test_progress_resumed_counts_from_initial():
  out = io.StringIO()
  with console.Progress(10, 'stage 2', initial=4, unit='episode', interval_s=3600,
                        file=out) as progress:
    progress.update(6)
  assert out.getvalue().startswith('stage 2: 10/10 (100%)') and 'episode/s' in out.getvalue()


class _Terminal(io.StringIO):

  def isatty(self):
    return True


def test_progress_on_a_terminal_redraws_one_line():
  text = _meter(_Terminal())
  assert text.count('\n') <= 1  # redrawn in place with carriage returns
  assert '\r' in text and '10/10' in text and 'loss=0.1' in text


def test_progress_and_result_are_silent_off_process_zero(monkeypatch, capsys):
  monkeypatch.setattr(outputs.jax, 'process_index', lambda: 1)
  assert _meter(io.StringIO(), interval_s=0.0) == ''
  console.result('stage 1', 'done')
  assert capsys.readouterr().out == ''


def test_result_is_one_line_on_stdout(capsys):
  console.result('stage 3', 'success 86 % (random policy 0 %)')
  assert capsys.readouterr().out == 'stage 3: success 86 % (random policy 0 %)\n'


def test_library_prints_are_swallowed_below_verbosity_2(capsys, clean_console):
  console.setup(0)
  with console.library_prints():
    print('Downloading and preparing dataset Unknown size ...')
  assert capsys.readouterr().out == ''
  console.setup(2)
  with console.library_prints():
    print('Dataset x downloaded and prepared')
  assert capsys.readouterr().out == 'Dataset x downloaded and prepared\n'


def _run_and_join(target, start):
  done = threading.Event()

  def body():
    try:
      target()
    finally:
      done.set()
  start(body)
  assert done.wait(10)
  time.sleep(0.05)  # the exception hook runs after the body


def test_library_and_thread_tracebacks_need_verbosity_1(capsys, absl_lines):
  """A thread that Python did not start (as TensorStore's C++ threads) writing to stderr, and a
  Python thread dying of an exception: one warning line at verbosity 0, everything at 1."""
  def foreign_print():
    print('Traceback (most recent call last):\nRuntimeError: Event loop is closed',
          file=sys.stderr)

  def boom():
    raise ValueError('boom\nsecond line')

  console.setup(0)
  _run_and_join(foreign_print, lambda body: _thread.start_new_thread(body, ()))
  _run_and_join(boom, lambda body: threading.Thread(target=body, name='loader').start())
  print('from the main thread', file=sys.stderr)
  quiet = capsys.readouterr().err.splitlines()
  assert quiet[-1] == 'from the main thread' and 'Event loop is closed' not in '\n'.join(quiet)
  warnings = [l for l in quiet if re.match(r'W\d{4} ', l)]
  assert len(warnings) == 1 and len(quiet) == 2, quiet
  assert warnings[0].endswith('thread loader stopped: ValueError: boom (--verbosity=1 shows the '
                              'traceback)')
  console.setup(1)
  _run_and_join(foreign_print, lambda body: _thread.start_new_thread(body, ()))
  _run_and_join(boom, lambda body: threading.Thread(target=body, name='loader').start())
  loud = capsys.readouterr().err
  assert 'RuntimeError: Event loop is closed' in loud
  assert 'Exception in thread loader' in loud and 'ValueError: boom' in loud
