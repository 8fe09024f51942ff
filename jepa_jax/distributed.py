"""Multi-process start-up: call `jax.distributed.initialize()` only when the job is multi-process.

Binaries call `maybe_initialize()` first thing (before any JAX computation). It initialises when

* explicit values are passed, or `JAX_COORDINATOR_ADDRESS` is set (with `JAX_NUM_PROCESSES`
  and `JAX_PROCESS_ID`, as `launch/gpu_multihost.sh` and `launch/local_multiprocess.sh` export),
* or `JEPA_JAX_DISTRIBUTED=1` is set (`launch/tpu_pod.sh` does, for every worker of a TPU pod
  slice, where the topology lives in the VM metadata rather than in the environment),
* or a known multi-process cluster is detected from the environment: `TPU_WORKER_HOSTNAMES`
  listing several hosts, SLURM with `SLURM_NTASKS > 1`, or Open MPI with
  `OMPI_COMM_WORLD_SIZE > 1`.

Without an explicit coordinator, JAX's own cluster detection supplies the coordinator, process
count and process id.

A single-process run (a laptop, one GPU host, a single-host TPU VM) does nothing.

A stopped peer is one line. Left to itself, when a process of the job dies (killed, out of
memory, its host lost), JAX's coordination service notices within its heartbeat timeout
(default 100 s; measured 54 s and 76 s after a SIGKILL) and aborts every other process with a
~100-line fatal C++ trace, or a collective raises first and Python prints its traceback. So
every process also writes its own heartbeat into the service's key-value store (`_PeerWatch`,
once a second). A peer silent for `JEPA_JAX_PEER_TIMEOUT_S` seconds (default 30; JAX's own
heartbeat timeout is set to 4x that, at least 100 s, so this watch always speaks first) is
reported by process 0 as

  error: process 1 stopped at step ~170 of pretrain (no heartbeat for 30 s); rerun the same
  command to resume from step 150

and every process exits with status 1 before JAX's abort (the step comes from
`checkpoint.progress`, the resume step from the newest finished checkpoint). A process that ends
normally marks itself so, and is never reported. Process 0 hosts the coordination service: if
it is the one that dies, JAX aborts the others at once, before any watch can speak.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
import time

import jax
from absl import logging


def _env_int(name: str) -> int | None:
  value = os.environ.get(name)
  if value is None or value == '':
    return None
  try:
    return int(value)
  except ValueError:
    raise ValueError(f'environment variable {name}={value!r} must be an integer') from None


def _cluster_is_multiprocess() -> bool:
  if os.environ.get('JEPA_JAX_DISTRIBUTED', '') not in ('', '0'):
    return True
  if len([h for h in os.environ.get('TPU_WORKER_HOSTNAMES', '').split(',') if h]) > 1:
    return True
  return (_env_int('SLURM_NTASKS') or 1) > 1 or (_env_int('OMPI_COMM_WORLD_SIZE') or 1) > 1


def maybe_initialize(coordinator_address: str | None = None, num_processes: int | None = None,
                     process_id: int | None = None) -> bool:
  """Initialises the JAX distributed runtime when the environment asks for it.

  Args:
    coordinator_address: 'host:port' of process 0 (default: `JAX_COORDINATOR_ADDRESS`).
    num_processes: total processes (default: `JAX_NUM_PROCESSES`).
    process_id: this process, in [0, num_processes) (default: `JAX_PROCESS_ID`).

  Returns:
    True when the runtime is (now) initialised, False for a single-process run.
  """
  if jax.distributed.is_initialized():
    return True
  coordinator_address = coordinator_address or os.environ.get('JAX_COORDINATOR_ADDRESS')
  num_processes = num_processes if num_processes is not None else _env_int('JAX_NUM_PROCESSES')
  process_id = process_id if process_id is not None else _env_int('JAX_PROCESS_ID')
  if coordinator_address:
    if num_processes == 1:
      return False
    if num_processes is None or process_id is None:
      raise ValueError(f'coordinator {coordinator_address} given, so set JAX_NUM_PROCESSES and '
                       'JAX_PROCESS_ID (or pass num_processes and process_id)')
  elif not _cluster_is_multiprocess():
    return False
  # CPU processes exchange collectives through gloo (TPU/GPU use their own interconnect).
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  heartbeat_s = max(100, int(_JAX_HEARTBEAT_FACTOR * peer_timeout_s()))  # see _PeerWatch
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes, process_id=process_id,
                             heartbeat_timeout_seconds=heartbeat_s)
  _start_peer_watch()
  logging.info('jax.distributed initialised: process %d of %d, %d local / %d global devices',
               jax.process_index(), jax.process_count(), jax.local_device_count(),
               jax.device_count())
  return True


# Seconds a peer may go without a heartbeat before it counts as stopped. JAX's coordination
# service aborts the job somewhere between half and all of its own heartbeat timeout after a
# death, so that timeout is set to 4x this one (at least JAX's default, 100 s).
PEER_TIMEOUT_ENV = 'JEPA_JAX_PEER_TIMEOUT_S'
_DEFAULT_PEER_TIMEOUT_S = 30.0
_MAX_PEER_TIMEOUT_S = 600.0
_JAX_HEARTBEAT_FACTOR = 4
_BEAT_INTERVAL_S = 1.0
_KEY_DIR = 'jepa_jax/peers/'
_STOP_DIR = 'jepa_jax/stop/'  # process 0 sets a key here when it reports a stopped peer
_EXITED = 'exited'  # a process's last heartbeat when it ends normally


class _PeerWatch:
  """Heartbeats through the coordination service's key-value store, and the stopped-peer report.

  Every process sets `jepa_jax/peers/<id>` to a counter once a second. Process 0 reads them all
  (one directory read): a peer whose counter has not changed for `timeout_s` has stopped.
  Process 0 then sets a key under `jepa_jax/stop/`, lets the others exit (each reads that
  directory once a second and leaves quietly, before process 0 takes the coordination service
  down with it), prints the one line and exits with status 1. `os._exit`: a normal exit would run JAX's shutdown, which waits for the dead
  peer and aborts.
  """

  def __init__(self, client: object, process: int, count: int, timeout_s: float):
    self._client = client
    self._process = process
    self._count = count
    self.timeout_s = timeout_s
    self._lock = threading.Lock()  # the last heartbeat ('exited') is never overwritten
    self._ended = False
    self._last_change = {}  # peer -> (heartbeat value, monotonic time it was first seen)
    self._stopped = threading.Event()

  def start(self) -> None:
    threading.Thread(target=self._run, name='jepa_jax_peer_watch', daemon=True).start()
    atexit.register(self.end)  # runs before jax's own shutdown (registered earlier)

  def end(self) -> None:
    """Marks this process as ended normally (its peers then never report it)."""
    with self._lock:
      self._ended = True
      try:
        self._client.key_value_set(f'{_KEY_DIR}{self._process}', _EXITED, allow_overwrite=True)
      except Exception:  # pylint: disable=broad-except  # the service may be gone already
        pass

  def _run(self) -> None:
    beat = 0
    while True:
      with self._lock:
        if self._ended:
          return
        beat += 1
        try:
          self._client.key_value_set(f'{_KEY_DIR}{self._process}', str(beat),
                                     allow_overwrite=True)
          beats = dict(self._client.key_value_dir_get(
              _KEY_DIR if self._process == 0 else _STOP_DIR))
        except Exception:  # pylint: disable=broad-except
          # The service is unreachable: process 0 is gone, and JAX aborts this process.
          beats = None
      if beats is not None:
        self._check(beats)
      time.sleep(_BEAT_INTERVAL_S)

  def _check(self, beats: dict[str, str]) -> None:
    """beats: on process 0 the peers' heartbeats, on the others the stop directory."""
    if self._process != 0:
      if beats:  # process 0 reports; leave before it takes the service down
        self._exit(None)
      return  # process 0 watches and reports
    now = time.monotonic()
    stopped = []
    for peer in range(1, self._count):
      value = beats.get(f'{_KEY_DIR}{peer}')
      if value == _EXITED:
        continue
      if peer not in self._last_change or self._last_change[peer][0] != value:
        self._last_change[peer] = (value, now)
      elif now - self._last_change[peer][1] > self.timeout_s:
        stopped.append(peer)
    if stopped:
      self._stopped.set()
      try:
        self._client.key_value_set(f'{_STOP_DIR}reported', ','.join(map(str, stopped)),
                                   allow_overwrite=True)
      except Exception:  # pylint: disable=broad-except
        pass
      time.sleep(3 * _BEAT_INTERVAL_S)  # the others see the key and leave
      self._exit(stopped_message(stopped, self.timeout_s))

  @staticmethod
  def _exit(message: str | None) -> None:
    if message is not None:
      print(f'error: {message}', file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1)  # pylint: disable=protected-access

  def wait_for_stop(self, seconds: float) -> None:
    """Sleeps up to `seconds`, or until this watch has found a stopped peer (it then ends the
    process itself, so this only returns when no peer stopped)."""
    if self._stopped.wait(seconds):
      time.sleep(10 * _BEAT_INTERVAL_S)  # the watch thread exits the process meanwhile


def stopped_message(peers: list[int], timeout_s: float) -> str:
  """'process 1 stopped at step ~170 of pretrain (no heartbeat for 30 s); rerun the same
  command to resume from step 150' (where the running stage is, from `checkpoint.progress`)."""
  from jepa_jax import checkpoint  # pylint: disable=g-import-not-at-top  # orbax: only if needed
  where = checkpoint.progress
  at = f' at step ~{where.step} of {where.stage}' if where.stage else ''
  who = (f'process {peers[0]}' if len(peers) == 1
         else f'processes {", ".join(map(str, peers))}')
  return (f'{who} stopped{at} (no heartbeat for {timeout_s:.0f} s); '
          f'{checkpoint.rerun_hint()}')


_watch: _PeerWatch | None = None


def peer_timeout_s() -> float:
  """Seconds of silence after which a peer process counts as stopped (`JEPA_JAX_PEER_TIMEOUT_S`,
  default 30)."""
  value = os.environ.get(PEER_TIMEOUT_ENV, '')
  if not value:
    return _DEFAULT_PEER_TIMEOUT_S
  try:
    seconds = float(value)
  except ValueError:
    seconds = -1.0
  if not 0 < seconds <= _MAX_PEER_TIMEOUT_S:
    raise ValueError(f'{PEER_TIMEOUT_ENV}={value!r} must be a number of seconds in '
                     f'(0, {_MAX_PEER_TIMEOUT_S:.0f}]; unset it for the default '
                     f'({_DEFAULT_PEER_TIMEOUT_S:.0f} s)')
  return seconds


def _start_peer_watch() -> None:
  global _watch
  from jax._src import distributed as jax_distributed  # pylint: disable=g-import-not-at-top
  # jax.distributed keeps its coordination-service client here (no public accessor).
  client = jax_distributed.global_state.client
  if client is None or jax.process_count() < 2:
    return
  _watch = _PeerWatch(client, jax.process_index(), jax.process_count(), peer_timeout_s())
  _watch.start()


def wait_for_stopped_peer() -> None:
  """Call when the main thread failed in a multi-process job: a collective whose peer died
  raises before the peer's heartbeat has timed out. Waits until the watch has decided (then a
  stopped peer ends the process with the one-line report); returns when no peer stopped."""
  if _watch is not None:
    _watch.wait_for_stop(_watch.timeout_s + 3 * _BEAT_INTERVAL_S)
