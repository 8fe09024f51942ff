"""Safe outputs: strict atomic JSON, output folders that never swallow user data, workdir locks.

  write_json(path, payload)                     atomic, strict JSON (NaN/Inf -> null), process 0
  write_atomically(path, write)                 any file (e.g. a PNG), atomic, process 0
  prepare_output_dir(path, kind=..., inputs=()) refuse foreign / input-overlapping folders,
                                                check writability before any work, mark as ours
  with WorkdirLock(workdir): ...                one process (group) per workdir

Multi-process jobs: call `jepa_jax.distributed.maybe_initialize()` first; `write_json` and
`WorkdirLock` then act on process 0 only (every process may call them).
"""

from __future__ import annotations

import datetime
import errno
import json
import math
import os
import socket
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from absl import logging
import jax
import numpy as np

MARKER_FILENAME = '.jepa_jax_output'
LOCK_FILENAME = '.lock'
# Probe files, and the marker while process 0 writes it (write_json's temporary file), may exist
# for an instant while several processes prepare the same folder; they never make a folder look
# foreign.
_PROBE_PREFIX = '.jepa_jax_probe.'
_TRANSIENT_PREFIXES = (_PROBE_PREFIX, f'.{MARKER_FILENAME}.')


def is_disk_full(error: BaseException) -> bool:
  """True when `error` (or an exception it was raised from) is ENOSPC: an OSError, or the
  message a library gives it (TensorStore inside orbax's errors, C++ writers)."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
      return True
    text = str(error)
    if 'No space left on device' in text or "os_error_code='28'" in text:
      return True
    error = error.__cause__ or error.__context__
  return False


def is_main_process() -> bool:
  """True on jax process 0 (the only writer of shared files in a multi-process job)."""
  return jax.process_index() == 0


# ----------------------------------------------------------------------------- JSON


def to_json_value(value: Any) -> Any:
  """Plain-JSON copy of `value`: numpy/jax scalars and arrays become numbers and lists,
  non-finite floats become None (JSON has no NaN), tuples become lists, keys become strings,
  ConfigDicts and dataclass-like `to_dict()` objects become dicts."""
  if hasattr(value, 'to_dict') and not isinstance(value, Mapping):
    value = value.to_dict()
  if isinstance(value, Mapping):
    return {str(k): to_json_value(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [to_json_value(v) for v in value]
  if isinstance(value, (np.ndarray, jax.Array)):
    return to_json_value(np.asarray(value).tolist())
  if isinstance(value, np.generic):
    value = value.item()
  if isinstance(value, float) and not math.isfinite(value):
    return None
  return value


def dumps(payload: Any) -> str:
  """Strict JSON text of `payload` (see `to_json_value`), sorted keys, indent 2."""
  return json.dumps(to_json_value(payload), sort_keys=True, indent=2, allow_nan=False) + '\n'


def write_atomically(path: str | os.PathLike, write: Callable[[str], None]) -> str | None:
  """Writes the file at `path` atomically; no-op on processes other than 0.

  `write(tmp)` fills a temporary file in the same folder (any format: text, a matplotlib
  `savefig(tmp, format=...)`), which then replaces `path` (os.replace), so a reader sees the
  old file or the complete new one, never half of it. Parent folders are created; the file is
  readable by all (0644). A failing `write` leaves the old file and no temporary file.

  Returns:
    The absolute path written, or None on a process that does not write.
  """
  if not is_main_process():
    return None
  path = os.path.abspath(os.fspath(path))
  folder = os.path.dirname(path)
  os.makedirs(folder, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=f'.{os.path.basename(path)}.', suffix='.tmp', dir=folder)
  os.close(fd)
  try:
    write(tmp)
    os.chmod(tmp, 0o644)  # mkstemp creates 0600; outputs are meant to be read by others
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
  return path


def write_json(path: str | os.PathLike, payload: Any) -> str | None:
  """Writes `payload` as strict JSON at `path` atomically (`write_atomically`, synced to disk
  before the rename); no-op on processes other than 0.

  Returns:
    The absolute path written, or None on a process that does not write.
  """
  if not is_main_process():
    return None
  text = dumps(payload)  # before touching the disk: an unserialisable payload leaves no file

  def write(tmp: str) -> None:
    with open(tmp, 'w') as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())

  return write_atomically(path, write)


# ----------------------------------------------------------------------------- output folders


def _contains(outer: str, inner: str) -> bool:
  """True when real path `inner` is `outer` or lies below it."""
  return os.path.commonpath([outer, inner]) == outer


def _marker_kind(path: str) -> str | None:
  try:
    with open(os.path.join(path, MARKER_FILENAME)) as f:
      return json.load(f).get('kind')
  except (OSError, ValueError, AttributeError):
    return None


def prepare_output_dir(path: str | os.PathLike, *, kind: str,
                       inputs: Iterable[str | os.PathLike] = ()) -> str:
  """Checks and creates an output folder before any work is done; returns its absolute path.

  Refuses (ValueError, one line naming the path and the fix) a `path` that
  * is a file, or lies inside a file's place (a parent is a file),
  * is, contains or lies inside one of `inputs` (an input would be overwritten),
  * is an existing non-empty folder that is not ours: it lacks the marker file
    `.jepa_jax_output` recording `kind` (user files would be mixed with or replaced by ours),
  * cannot be created or written (checked by creating and removing a probe file).
  Then writes the marker (process 0), so a rerun into the same folder is accepted.

  Args:
    path: the output folder (e.g. a stage's --workdir, the converter's --output).
    kind: what writes it (e.g. 'pretrain', 'world_model', 'converted_checkpoint'); a folder
      marked with another kind is refused too.
    inputs: files or folders the job reads.
  """
  path = os.path.abspath(os.fspath(path))
  real = os.path.realpath(path)
  for source in inputs:
    source_real = os.path.realpath(os.fspath(source))
    if _contains(real, source_real) or _contains(source_real, real):
      relation = ('is' if real == source_real else
                  'contains' if _contains(real, source_real) else 'is inside')
      raise ValueError(f'output {path} {relation} the input {os.fspath(source)}; write the output '
                       'to a separate folder')
  if os.path.exists(real) and not os.path.isdir(real):
    raise ValueError(f'output {path} is a file, not a folder; pass a folder path (a new or empty '
                     'one)')
  if os.path.isdir(real):
    entries = [e for e in os.listdir(real) if not e.startswith(_TRANSIENT_PREFIXES)]
    if entries:
      found = _marker_kind(real)
      if found is None:
        raise ValueError(
            f'output {path} already holds files not written by jepa_jax ({len(entries)} entries, '
            f'e.g. {sorted(entries)[0]!r}); pass a new or empty folder')
      if found != kind:
        raise ValueError(f'output {path} holds a {found!r} output, not {kind!r}; pass a new or '
                         'empty folder')
  try:
    os.makedirs(real, exist_ok=True)
    probe = os.path.join(real, f'{_PROBE_PREFIX}{socket.gethostname()}.{os.getpid()}')
    with open(probe, 'w') as f:
      f.write('probe')
    os.remove(probe)
  except OSError as e:
    raise ValueError(f'output {path} cannot be created or written ({e.strerror or e}); pass a '
                     'folder you can write to') from None
  if is_main_process() and _marker_kind(real) != kind:
    write_json(os.path.join(real, MARKER_FILENAME), {'kind': kind})
  return path


# ----------------------------------------------------------------------------- workdir lock


class WorkdirBusyError(RuntimeError):
  """Another live process holds the workdir lock."""


def _process_start_ticks(pid: int) -> int | None:
  """Start time of `pid` in clock ticks since boot (Linux /proc), to tell a reused pid apart."""
  try:
    with open(f'/proc/{pid}/stat') as f:
      # The command name (field 2) may hold spaces; fields after its ')' are plain.
      return int(f.read().rsplit(')', 1)[1].split()[19])
  except (OSError, IndexError, ValueError):
    return None


def _pid_alive(pid: int, start_ticks: int | None) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # exists, owned by another user
    pass
  if start_ticks is not None:
    current = _process_start_ticks(pid)
    if current is not None and current != start_ticks:
      return False  # the pid was reused by a newer process
  return True


class WorkdirLock:
  """Context manager: one process (process 0 of a multi-process job) owns `path` at a time.

  Entering creates `<path>/.lock` atomically (O_CREAT | O_EXCL) holding the host, pid and start
  time; exiting removes it. A second holder gets `WorkdirBusyError` (a RuntimeError, one line
  naming the holder). A lock left by a killed process on this host (its pid no longer alive)
  is taken over with a one-line warning. `path` must exist (see `prepare_output_dir`).
  """

  def __init__(self, path: str | os.PathLike):
    self.path = os.path.abspath(os.fspath(path))
    self.lock_path = os.path.join(self.path, LOCK_FILENAME)
    self._held = False

  def _holder_record(self) -> dict:
    pid = os.getpid()
    return {'host': socket.gethostname(), 'pid': pid, 'pid_start_ticks': _process_start_ticks(pid),
            'since': datetime.datetime.now().astimezone().isoformat(timespec='seconds')}

  def _try_create(self, record: dict) -> bool:
    try:
      fd = os.open(self.lock_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      return False
    with os.fdopen(fd, 'w') as f:
      json.dump(record, f)
    return True

  def _read_holder(self) -> dict | None:
    """The holder record, or None if the lock vanished; waits briefly for a holder that has
    created the file but not yet written it."""
    deadline = time.monotonic() + 2.0
    while True:
      try:
        with open(self.lock_path) as f:
          holder = json.load(f)
        if isinstance(holder, dict) and 'pid' in holder:
          return holder
      except FileNotFoundError:
        return None
      except (OSError, ValueError):
        pass
      if time.monotonic() > deadline:
        raise WorkdirBusyError(
            f'workdir {self.path} has an unreadable lock file {self.lock_path}; if no job is '
            'using this workdir, delete that file')
      time.sleep(0.05)

  def _take_over_if_stale(self, holder: dict) -> bool:
    """Removes a lock whose holder died on this host; False if the holder may be alive."""
    if holder.get('host') != socket.gethostname():
      return False
    if _pid_alive(int(holder['pid']), holder.get('pid_start_ticks')):
      return False
    # Rename first: of two processes taking over the same stale lock, only one succeeds.
    stale = f'{self.lock_path}.stale.{os.getpid()}'
    try:
      os.rename(self.lock_path, stale)
    except FileNotFoundError:
      return True  # someone else removed it; retry the creation
    os.remove(stale)
    logging.warning('workdir %s: taking over the lock of pid %s (since %s), which is no '
                    'longer running', self.path, holder['pid'], holder.get('since'))
    return True

  def acquire(self) -> None:
    if not is_main_process():
      return
    record = self._holder_record()
    for _ in range(10):  # a few rounds of races with other starters
      if self._try_create(record):
        self._held = True
        return
      holder = self._read_holder()
      if holder is None or self._take_over_if_stale(holder):
        continue
      raise WorkdirBusyError(
          f'workdir {self.path} is in use by pid {holder["pid"]} on {holder.get("host")} since '
          f'{holder.get("since")}; wait for that job or use another --workdir (if it is gone, '
          f'delete {self.lock_path})')
    raise WorkdirBusyError(f'workdir {self.path}: could not take the lock {self.lock_path} '
                           '(other jobs keep starting); retry')

  def release(self) -> None:
    if not self._held:
      return
    self._held = False
    try:
      with open(self.lock_path) as f:
        holder = json.load(f)
    except (OSError, ValueError):
      return
    if holder.get('pid') == os.getpid() and holder.get('host') == socket.gethostname():
      os.remove(self.lock_path)

  def __enter__(self) -> 'WorkdirLock':
    self.acquire()
    return self

  def __exit__(self, *exc_info) -> None:
    self.release()
