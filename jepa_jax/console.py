"""A terminal a person can read: quiet libraries, one live progress line per stage, one result line.

  console.setup(verbosity)                 call first in a binary's main (absl's --verbosity/-v)
  with console.Progress(total, 'stage 2') as progress:
    progress.update(n); progress.set_postfix(loss=...)
  console.result('stage 2', 'rollout error 3.0e-4 (constant-latent baseline 1.4e-4)')
  with console.library_prints(): builder.download_and_prepare()   TFDS prints to stdout
  console.run_app(main)                    absl app.run; user errors end in one line

What a smoke `pretrain` printed before (measured, 168 lines): 141 INFO lines from Orbax, 6 from
grain, 5 from TFDS, jax's "Unable to initialize backend 'tpu'" probe, 5 of ours.

Verbosity levels:
  0 (default)  warnings and errors only, plus Progress and result lines; no library or thread
               traceback (a failure reaches the user as one line, from `run_app`);
  1            also jepa_jax's own INFO logs, and the tracebacks: library log records that carry
               one, exceptions that end a thread, and what TensorStore's own threads print;
  2 and more   also library INFO logs (Orbax, grain, TFDS, jax's backend probe, ...).
Progress and result print on jax process 0 only.

What a failed checkpoint write printed before (measured, workdir on a full 12 MB tmpfs: 1,297
lines): 162 'Event loop is closed' tracebacks printed by TensorStore's threads (callbacks of
writes that orbax abandoned after the first failure), orbax's background threads logging the
failure with tracebacks, then our one line. At verbosity 0 only that line is left.
"""

from __future__ import annotations

import contextlib
import glob
import io
import logging as std_logging
import os
import sys
import threading
import time
from typing import Any, Callable, Iterator, TextIO

from absl import app
from absl import flags
from absl import logging
import tqdm

from jepa_jax import distributed, outputs

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Logs whose source file lies here are ours; everything else is a library's.
_OWN_ROOTS = tuple(os.path.join(_REPO_ROOT, name) + os.sep for name in ('jepa_jax', 'experiments'))
# Warnings that every run triggers and that say nothing to act on.
_NOISE_WARNINGS = (
    'Using custom data configuration',  # TFDS, for every custom BuilderConfig
    # Orbax, when a save waited > 1 s for the previous one: TrainCheckpointer.save waits on
    # purpose (the free-space check needs the previous step on disk).
    'Waiting for previous save to complete took',
)


class _LibraryLogFilter(std_logging.Filter):
  """Drops library INFO records (and known noise warnings) below the requested verbosity, and
  library records that carry a traceback below verbosity 1 (orbax's background threads log
  each failure they pass on with one; the failure itself reaches `run_app`)."""

  def __init__(self, verbosity: int):
    super().__init__()
    self.verbosity = verbosity

  def filter(self, record: std_logging.LogRecord) -> bool:
    own = record.pathname.startswith(_OWN_ROOTS)
    if not own and record.exc_info and self.verbosity < 1:
      return False
    if record.levelno >= std_logging.WARNING:
      return own or self.verbosity >= 2 or not str(record.msg).startswith(_NOISE_WARNINGS)
    return self.verbosity >= 2 or (own and self.verbosity >= 1)


class _ForeignThreadQuietStderr:
  """`sys.stderr` below verbosity 1: drops what threads started outside Python write to it.

  Those are TensorStore's C++ threads: when orbax abandons a batch of reads or writes after the
  first one failed (a damaged step, a full disk), it closes its event loop, and each late
  TensorStore callback prints an 'Event loop is closed' traceback from its own thread (dozens to
  hundreds per failure). Python threads and the main thread write through unchanged.
  """

  def __init__(self, stream: TextIO):
    self.stream = stream

  def write(self, text: str) -> int:
    # threading keeps a _DummyThread for every thread it did not start (its documented
    # "dummy thread objects"); there is no public test for it.
    if isinstance(threading.current_thread(), threading._DummyThread):  # pylint: disable=protected-access
      return len(text)
    return self.stream.write(text)

  def __getattr__(self, name: str) -> Any:
    return getattr(self.stream, name)


def _one_line_thread_exception(args: threading.ExceptHookArgs) -> None:
  """`threading.excepthook` below verbosity 1: a thread that dies of an exception is one warning
  line (its traceback at verbosity 1)."""
  if args.exc_type is SystemExit:
    return
  first = str(args.exc_value).strip().splitlines()[0] if str(args.exc_value).strip() else ''
  logging.warning('thread %s stopped: %s%s (--verbosity=1 shows the traceback)',
                  args.thread.name if args.thread else '?', args.exc_type.__name__,
                  f': {first}' if first else '')


_verbosity = 0  # as last set by `setup`


# Device files of TPU chips: /dev/accel<n> (v2-v5e) or /dev/vfio/<n> (v5p, v6e).
_TPU_DEVICE_FILES = ('/dev/accel*', '/dev/vfio/[0-9]*')


def _quiet_libtpu_without_chips() -> None:
  """libtpu (the `test` extra installs it for ahead-of-time TPU compiles) probes for TPU hosts
  when JAX starts its backends; on a machine with no TPU chip that prints about five lines of
  warnings before JAX falls back to the CPU. Told that this is a single local host, it probes
  nothing. A machine with TPU chips, or a user's own TPU_* settings, are left alone."""
  if any(glob.glob(pattern) for pattern in _TPU_DEVICE_FILES):
    return
  for key, value in (('TPU_SKIP_MDS_QUERY', '1'), ('TPU_WORKER_HOSTNAMES', 'localhost'),
                     ('TPU_ACCELERATOR_TYPE', 'v5litepod-1')):
    os.environ.setdefault(key, value)


def setup(verbosity: int = 0) -> None:
  """Sets what the terminal shows (see the module docstring for the levels).

  Call it at the start of `main` (after flags are parsed; absl's `--verbosity` is the natural
  flag to pass). Calling it again replaces the previous setting.
  """
  global _verbosity
  verbosity = _verbosity = int(verbosity)
  if verbosity < 2:
    # TensorFlow's C++ logs, should TF be imported later (tensorboard writers may import it).
    os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  _quiet_libtpu_without_chips()
  # absl routes every Python logger (Orbax, grain, TFDS and jax use absl or std logging) through
  # its root handler; the level lets INFO through, the filter decides whose.
  logging.set_verbosity(logging.INFO if verbosity >= 1 else logging.WARNING)
  handler = logging.get_absl_handler()
  for old in [f for f in handler.filters if isinstance(f, _LibraryLogFilter)]:
    handler.removeFilter(old)
  handler.addFilter(_LibraryLogFilter(verbosity))
  stderr = sys.stderr.stream if isinstance(sys.stderr, _ForeignThreadQuietStderr) else sys.stderr
  sys.stderr = stderr if verbosity >= 1 else _ForeignThreadQuietStderr(stderr)
  threading.excepthook = (threading.__excepthook__ if verbosity >= 1
                          else _one_line_thread_exception)
  if verbosity < 2:
    try:  # TFDS's own progress bars while a dataset is built
      import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
      tfds.display_progress_bar(False)
    except ImportError:
      pass


@contextlib.contextmanager
def library_prints() -> Iterator[None]:
  """Swallows what a library prints to stdout inside the block, below verbosity 2.

  For libraries that print instead of logging, e.g. TFDS's 'Downloading and preparing dataset
  ...' / 'Dataset ... downloaded and prepared' around `builder.download_and_prepare()`.
  """
  if _verbosity >= 2:
    yield
    return
  with contextlib.redirect_stdout(io.StringIO()):
    yield


class Progress:
  """One live progress line: `desc: n/total (pct) [elapsed<ETA, rate, metrics]`.

  On a terminal it is a tqdm bar redrawn in place. Elsewhere (a log file, a pipe) it prints the
  same line as a new line every `interval_s` seconds and once at the end, so logs stay short.
  Silent on processes other than 0.

  Args:
    total: number of units (steps, episodes) when done.
    desc: what runs, e.g. 'stage 1 pretrain'.
    initial: units already done (a resumed run).
    unit: name of one unit ('step', 'episode').
    interval_s: seconds between printed lines when not on a terminal.
    file: where to print (default stderr).
  """

  def __init__(self, total: int, desc: str, *, initial: int = 0, unit: str = 'step',
               interval_s: float = 60.0, file: TextIO | None = None):
    self._file = file or sys.stderr
    self._enabled = outputs.is_main_process()
    self._live = self._enabled and self._file.isatty()
    self._interval_s = float(interval_s)
    self._last_print = time.monotonic()
    self._printed = None  # (count, postfix) of the last printed line
    # Off a terminal tqdm draws into a sink: it still keeps the count, rate and postfix.
    self._bar = tqdm.tqdm(
        total=total, desc=desc, initial=initial, unit=unit, dynamic_ncols=True, leave=True,
        file=self._file if self._live else _Sink(), disable=not self._enabled,
        bar_format=None if self._live else
        '{desc}: {n_fmt}/{total_fmt} ({percentage:.0f}%) [{elapsed}<{remaining}, '
        '{rate_fmt}{postfix}]')

  def update(self, n: int = 1) -> None:
    """Adds `n` finished units."""
    if not self._enabled:
      return
    self._bar.update(n)
    if not self._live and time.monotonic() - self._last_print >= self._interval_s:
      self._print_line()

  def set_postfix(self, **metrics: Any) -> None:
    """Shows `metrics` (e.g. loss=0.51, grad_norm=0.55) at the end of the line."""
    if self._enabled:
      self._bar.set_postfix(refresh=self._live, **metrics)

  def _print_line(self) -> None:
    self._last_print = time.monotonic()
    self._printed = (self._bar.n, self._bar.postfix)
    print(self._bar.format_meter(**self._bar.format_dict), file=self._file, flush=True)

  def close(self) -> None:
    """Ends the line (off a terminal: prints it once more if the count or metrics changed)."""
    if not self._enabled:
      return
    if not self._live and self._printed != (self._bar.n, self._bar.postfix):
      self._print_line()
    self._bar.close()

  def __enter__(self) -> 'Progress':
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()


class _Sink:
  """A file that discards what tqdm draws."""

  def write(self, text: str) -> None:
    del text

  def flush(self) -> None:
    pass


def result(stage: str, text: str) -> None:
  """Prints the one-line result of a finished stage, `stage: text`, on stdout (process 0)."""
  if outputs.is_main_process():
    tqdm.tqdm.write(f'{stage}: {text}', file=sys.stdout)
    sys.stdout.flush()


# Errors caused by what the user passed (paths, files, flags, a missing optional extra): a
# binary reports them in one line instead of a traceback.
USER_ERRORS = (ValueError, OSError, ImportError, outputs.WorkdirBusyError)


def _disk_full_line(error: BaseException) -> str:
  """A full disk in one line: checkpoint.DiskFullError's own (the path, MB free and needed), or
  for any other write (a summary, TensorBoard events, a dataset) the library's first line and
  the step a rerun resumes from."""
  from jepa_jax import checkpoint  # pylint: disable=g-import-not-at-top  # orbax: only here
  if isinstance(error, checkpoint.DiskFullError):
    return str(error)
  first = (str(error).strip().splitlines() or [''])[0][:300]
  return (f'no space left on device ({type(error).__name__}: {first}); free space and '
          f'{checkpoint.rerun_hint()}')


def run_app(main: Callable[[list[str]], Any], flags_parser: Callable | None = None) -> None:
  """`absl.app.run(main, flags_parser)`, but a `USER_ERRORS` exception ends the program with
  `error: <message>` on stderr and exit status 1 instead of a traceback (pass `--verbosity=1`
  to see it); so does a full disk, whatever library's write met it (`outputs.is_disk_full`). In
  a multi-process job any other exception first waits for the peer watch
  (`distributed.wait_for_stopped_peer`): when a peer process died, the collective that waited
  on it fails here, and the watch replaces the traceback with its one line."""

  def guarded(argv: list[str]) -> Any:
    try:
      return main(argv)
    except Exception as e:  # pylint: disable=broad-except
      if flags.FLAGS['verbosity'].value < 1 and outputs.is_disk_full(e):
        sys.exit(f'error: {_disk_full_line(e)}')
      if isinstance(e, USER_ERRORS):
        if flags.FLAGS['verbosity'].value >= 1:
          raise
        sys.exit(f'error: {e}')
      distributed.wait_for_stopped_peer()
      raise

  if flags_parser is None:
    app.run(guarded)
  else:
    app.run(guarded, flags_parser=flags_parser)
