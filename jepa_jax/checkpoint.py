"""Orbax checkpoints: resumable training checkpoints and exported frozen models.

Training checkpoints (`TrainCheckpointer`) hold three items per step, so a preempted job resumes
exactly: `state` (the train-state pytree: params, optimiser state, step, rng, ...), `data_iter`
(the grain iterator position) and `config` (JSON). Orbax writes each step into a temporary
directory (`<step>.orbax-checkpoint-tmp...`) and renames it once complete, so a half-written step
is never seen by `latest_step` and never restored. A finished step that was damaged later (a
truncated file) is skipped on restore with a one-line warning: the newest intact step is restored
and the damaged ones are moved to `<directory>/corrupt_steps/`. A checkpoint whose tree or shapes
do not fit the model being resumed (a changed depth or width) is refused in one line.

A full disk is one line too (`DiskFullError`, an OSError): before a checkpoint step or an export
is written, the free space is checked against its size (the arrays' bytes, before compression),
and a write that still fails for want of space (ENOSPC inside Orbax/TensorStore) is reported the
same way: the path, MB free and needed, and the step a rerun of the same command resumes from.
The half-written step or export is removed; the finished ones stay.

Exported models (`save_model` / `load_model`) bridge the stages: a directory with the `params`
pytree and a JSON `metadata` item `{'kind', 'config', 'extra'}`, so a later stage rebuilds the
module from the checkpoint alone. Each export records its files' sizes (`file_sizes.json`), so
a truncated or missing file is named before orbax reads anything; any damaged export is one
ValueError naming the file and the fix. Exports are replaced atomically, never hold NaN/Inf, and
never overwrite a folder that is not an export.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import re
import shutil
import sys
import time
import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

from absl import logging
import grain.checkpoint as grain_checkpoint
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from jepa_jax import outputs

CORRUPT_STEPS_DIRNAME = 'corrupt_steps'
# Written by save_model into each export: {file: bytes}, checked by load_model before reading.
EXPORT_SIZES_FILENAME = 'file_sizes.json'
# How many differing leaves an incompatibility message lists.
_MAX_LISTED_LEAVES = 3


class IncompatibleCheckpointError(ValueError):
  """The checkpoint's tree or array shapes differ from the model's (e.g. a changed depth)."""


class DiskFullError(OSError):
  """No room for a checkpoint step or an export (an OSError: the binaries print it in one line)."""


@dataclasses.dataclass
class RunProgress:
  """The training stage this process runs, for the messages that say where a rerun resumes (a
  full disk, a stopped peer process). `training.run_train_loop` keeps it up to date.

  stage: the stage's name ('pretrain'); step: the last step this process started;
  directory: the stage's checkpoint folder.
  """
  stage: str | None = None
  step: int | None = None
  directory: str | None = None


progress = RunProgress()


def finished_steps(directory: str | os.PathLike) -> list[int]:
  """Steps whose checkpoint is complete on disk in `directory`, ascending (orbax writes a step
  into `<step>.orbax-checkpoint-tmp...` and renames it to `<step>` once complete)."""
  try:
    names = os.listdir(directory)
  except OSError:
    return []
  return sorted(int(name) for name in names
                if name.isdigit() and os.path.isdir(os.path.join(directory, name)))


def rerun_hint(directory: str | os.PathLike | None = None) -> str:
  """'rerun the same command to resume from step S': S is the newest finished step in
  `directory` (default: the running stage's checkpoint folder, `progress.directory`)."""
  directory = directory or progress.directory
  steps = finished_steps(directory) if directory else []
  if steps:
    return f'rerun the same command to resume from step {steps[-1]}'
  if progress.stage:
    return f'rerun the same command ({progress.stage} starts again from step 0)'
  return 'rerun the same command'


def tree_nbytes(tree: Any) -> int:
  """Bytes of the arrays of `tree` (global shapes; arrays, numpy scalars, ShapeDtypeStructs)."""
  total = 0
  for leaf in jax.tree_util.tree_leaves(tree):
    if hasattr(leaf, 'shape') and hasattr(leaf, 'dtype'):
      total += int(np.prod(leaf.shape, dtype=np.int64)) * np.dtype(leaf.dtype).itemsize
  return total


def _free_bytes(path: str) -> int | None:
  """Free bytes of the filesystem that holds `path` (its nearest existing parent), or None
  where it cannot be asked (a remote path such as gs://)."""
  if '://' in path:
    return None
  while not os.path.exists(path):
    parent = os.path.dirname(path)
    if parent == path:
      return None
    path = parent
  return shutil.disk_usage(path).free


def _free_inodes(path: str) -> int | None:
  """Free file entries (inodes) of the filesystem holding `path`; None where it has no limit."""
  while not os.path.exists(path):
    path = os.path.dirname(path)
  stats = os.statvfs(path)
  return stats.f_favail if stats.f_files else None


def _disk_full_error(path: str, need_bytes: int, resume_from: str | None,
                     out_of_inodes: bool = False) -> DiskFullError:
  """The one-line error. `out_of_inodes`: the filesystem had no free file entries when the write
  failed (ENOSPC with bytes to spare)."""
  free = _free_bytes(path)
  have = 'free space unknown' if free is None else f'{free / 1e6:.1f} MB free'
  if out_of_inodes:
    have += ' but no free inodes (file entries)'
  error = DiskFullError(f'no space left on device while writing {path}: {have}, need about '
                        f'{need_bytes / 1e6:.1f} MB; free space and {rerun_hint(resume_from)}')
  error.errno = errno.ENOSPC
  return error


def check_free_space(path: str | os.PathLike, need_bytes: int,
                     resume_from: str | os.PathLike | None = None) -> None:
  """Raises DiskFullError (one line) when the filesystem of `path` has fewer than `need_bytes`
  free. `resume_from`: the checkpoint folder whose newest step a rerun resumes from."""
  path = os.fspath(path)
  free = _free_bytes(path)
  if free is not None and free < need_bytes:
    raise _disk_full_error(path, need_bytes, resume_from and os.fspath(resume_from))


def _remove_partial_writes(directory: str, name: str = '') -> None:
  """Removes orbax's temporary folders (`<name>...orbax-checkpoint-tmp...`) in `directory` on
  process 0: a write that failed leaves one, holding the space it took.

  Orbax raises at the first failed write while TensorStore's other writes of the same save are
  still landing (they may recreate a folder just removed), so it removes until the folder has
  stayed gone for three looks 50 ms apart (2 s at most). Nothing there: returns at once."""
  if jax.process_index() != 0 or not os.path.isdir(directory):
    return
  removed, quiet_looks, deadline = False, 0, time.monotonic() + 2.0
  while quiet_looks < 3 and time.monotonic() < deadline:
    partial = [entry for entry in os.listdir(directory)
               if entry.startswith(name) and '.orbax-checkpoint-tmp' in entry]
    if not partial and not removed:
      return
    for entry in partial:
      shutil.rmtree(os.path.join(directory, entry), ignore_errors=True)
    removed = removed or bool(partial)
    quiet_looks = 0 if partial else quiet_looks + 1
    time.sleep(0.05)


def _to_json(value: Any) -> Any:
  """Makes configs/extras JSON-serialisable; numpy arrays round-trip via a tagged dict."""
  if hasattr(value, 'to_dict'):  # ml_collections.ConfigDict
    value = value.to_dict()
  if isinstance(value, Mapping):
    return {str(k): _to_json(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_to_json(v) for v in value]
  if isinstance(value, (np.ndarray, jax.Array)):
    array = np.asarray(value)
    return {'__ndarray__': array.tolist(), 'dtype': str(array.dtype)}
  if isinstance(value, np.generic):
    return value.item()
  return value


def _from_json(value: Any) -> Any:
  if isinstance(value, Mapping):
    if set(value) == {'__ndarray__', 'dtype'}:
      return np.asarray(value['__ndarray__'], dtype=value['dtype'])
    return {k: _from_json(v) for k, v in value.items()}
  if isinstance(value, list):
    return [_from_json(v) for v in value]
  return value


def abstract_like(tree: Any) -> Any:
  """`jax.ShapeDtypeStruct` tree (keeping each array's sharding) to use as a restore target."""
  def one(x):
    return jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=getattr(x, 'sharding', None))
  return jax.tree_util.tree_map(one, tree)


class TrainCheckpointer:
  """Periodic, atomic, resumable training checkpoints (orbax `CheckpointManager`).

  Args:
    directory: where step directories `<workdir>/checkpoints/<step>/{state,data_iter,config}` go.
    save_interval_steps: `save` writes only on multiples of this (unless `force=True`).
    max_to_keep: number of most recent steps kept on disk.
    config: optional JSON-able dict (or ConfigDict) stored with every step.
  """

  def __init__(self, directory: str | os.PathLike, *, save_interval_steps: int,
               max_to_keep: int = 3, config: Mapping[str, Any] | None = None):
    if save_interval_steps < 1:
      raise ValueError(f'save_interval_steps must be >= 1, got {save_interval_steps}')
    self.directory = os.path.abspath(os.fspath(directory))
    self.save_interval_steps = int(save_interval_steps)
    self._config = None if config is None else _to_json(config)
    policies = ocp.checkpoint_managers
    # Multiples of the interval, plus orbax's preemption save (multi-host jobs); unlike orbax's
    # default, no extra save at the first step a manager sees (every resume would add one).
    # cleanup_tmp_directories: a step whose write was interrupted (killed job, full disk) is
    # removed when the next run opens the folder.
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, create=True, cleanup_tmp_directories=True,
        save_decision_policy=policies.AnySavePolicy([
            policies.FixedIntervalPolicy(save_interval_steps),
            policies.PreemptionCheckpointingPolicy()]))
    # Explicit handlers: orbax can then read every item's metadata, and restoring a subset of
    # the items does not warn about the others.
    self._manager = ocp.CheckpointManager(
        self.directory, options=options,
        item_handlers={'state': ocp.StandardCheckpointHandler(),
                       'data_iter': grain_checkpoint.CheckpointHandler(),
                       'config': ocp.JsonCheckpointHandler()})
    self._writing = None  # (step, bytes) of the last save issued, for a disk-full message

  def latest_step(self) -> int | None:
    """Newest step: saved (or being saved) by this manager, or finished on disk; else None."""
    return self._manager.latest_step()

  def should_save(self, step: int) -> bool:
    """Whether `save(step, ...)` would write (interval or preemption policy)."""
    return self._manager.should_save(int(step))

  def save(self, step: int, state: Any, data_iter: Any = None, force: bool = False) -> bool:
    """Saves `state` (and the iterator position) at `step` if due; returns whether it saved.

    Asynchronous: arrays are copied off the device, then written in the background; call
    `wait()` before reading the files.

    Raises:
      DiskFullError: the disk has no room for the step (`check_room`), or this write or the
        previous one ran out of space (the half-written step is removed).
    """
    step = int(step)
    if not (force or self.should_save(step)):
      return False
    items = {'state': ocp.args.StandardSave(state)}
    if data_iter is not None:
      items['data_iter'] = grain_checkpoint.CheckpointSave(data_iter)
    if self._config is not None:
      items['config'] = ocp.args.JsonSave(self._config)
    with self._reporting_disk_full():
      self._manager.wait_until_finished()  # the previous write's space is taken before checking
      self.check_room(step, state)
      # A write that fails anyway is reported with the arrays' bytes (the most it can need).
      self._writing = (step, tree_nbytes(state))
      return self._manager.save(step, args=ocp.args.Composite(**items), force=True)

  def check_room(self, step: int, state: Any) -> None:
    """Raises DiskFullError (one line) when the disk has no room for step `step` of `state`
    (the size of the newest finished step, or `state`'s bytes before the first)."""
    check_free_space(os.path.join(self.directory, str(int(step))), self._step_bytes(state),
                     self.directory)

  def _step_bytes(self, state: Any) -> int:
    """The room a new step takes: the newest finished step's files (orbax compresses: a smoke
    stage-1 step holds 21 MB on disk for 27 MB of arrays), or the arrays' bytes before the
    first one."""
    steps = finished_steps(self.directory)
    if steps:
      return sum(_file_sizes(os.path.join(self.directory, str(steps[-1]))).values())
    return tree_nbytes(state)

  @contextlib.contextmanager
  def _reporting_disk_full(self) -> Iterator[None]:
    """Turns an orbax/TensorStore ENOSPC of the step being written into one DiskFullError."""
    try:
      yield
    except DiskFullError:
      raise
    except Exception as e:  # pylint: disable=broad-except  # orbax re-raises many types
      if not outputs.is_disk_full(e) or self._writing is None:
        raise
      step, need = self._writing
      self._writing = None  # reported once
      out_of_inodes = _free_inodes(self.directory) == 0  # before the partial step is removed
      _remove_partial_writes(self.directory)
      raise _disk_full_error(os.path.join(self.directory, str(step)), need, self.directory,
                             out_of_inodes) from None

  def restore_or_none(self, abstract_state: Any, data_iter: Any = None) -> Any | None:
    """Restores the newest intact step into the layout of `abstract_state`, or returns None.

    A damaged step (unreadable or truncated files) is skipped with a one-line warning and moved
    to `<directory>/corrupt_steps/`, so `latest_step()` then names the restored step and
    training continues from it.

    Args:
      abstract_state: tree of `jax.ShapeDtypeStruct` with `sharding` set (see `abstract_like`)
        or concrete arrays; restored arrays land with those shardings.
      data_iter: grain iterator whose position is set in place to the saved one.

    Returns:
      The restored state, or None when the directory holds no finished checkpoint.

    Raises:
      IncompatibleCheckpointError: the saved tree or shapes differ from `abstract_state`.
      ValueError: every step is damaged.
    """
    steps = sorted(self._manager.all_steps(), reverse=True)
    if not steps:
      return None
    damaged = []
    _drop_abandoned_read_reports()
    for step in steps:
      try:
        stored = self._manager.item_metadata(step)['state']
      except Exception as e:  # pylint: disable=broad-except
        damaged.append((step, _short_reason(e)))
        continue
      if stored is not None:  # None: orbax could not read the tree metadata
        _check_compatible(stored, abstract_state, f'checkpoint step {step} in {self.directory}')
      items = {'state': ocp.args.StandardRestore(abstract_state)}
      if data_iter is not None:
        items['data_iter'] = grain_checkpoint.CheckpointRestore(data_iter)
      try:
        restored = self._manager.restore(step, args=ocp.args.Composite(**items))
      except IncompatibleCheckpointError:
        raise
      except Exception as e:  # pylint: disable=broad-except
        damaged.append((step, _short_reason(e)))
        continue
      if damaged:
        self._set_aside(damaged, restored_step=step)
      return restored['state']
    raise ValueError(
        f'every checkpoint step in {self.directory} is damaged (step {damaged[0][0]}: '
        f'{damaged[0][1]}); delete {self.directory} to start the stage afresh')

  def _set_aside(self, damaged: list[tuple[int, str]], restored_step: int) -> None:
    """Moves damaged steps out of the manager's sight (a newer step blocks later saves)."""
    steps = ', '.join(str(step) for step, _ in damaged)
    logging.warning('%s: step %s damaged (%s); resuming from step %d, damaged steps moved to %s',
                    self.directory, steps, damaged[0][1], restored_step,
                    os.path.join(self.directory, CORRUPT_STEPS_DIRNAME))
    if jax.process_index() == 0:
      aside = os.path.join(self.directory, CORRUPT_STEPS_DIRNAME)
      os.makedirs(aside, exist_ok=True)
      for step, _ in damaged:
        source = os.path.join(self.directory, str(step))
        if os.path.isdir(source):
          os.rename(source, os.path.join(aside, f'{step}.{int(time.time())}'))
    _sync('jepa_jax_checkpoint_set_aside')
    self._manager.reload()

  def restore_config(self) -> dict | None:
    """The JSON config stored with the newest readable step (None if no step or no config)."""
    for step in sorted(self._manager.all_steps(), reverse=True):
      try:
        if 'config' not in self._manager.item_metadata(step):
          return None
        restored = self._manager.restore(
            step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
      except Exception:  # pylint: disable=broad-except
        continue  # damaged step; restore_or_none reports and sets it aside
      return _from_json(restored['config'])
    return None

  def wait(self) -> None:
    """Blocks until pending asynchronous saves are on disk (DiskFullError if one ran out of
    space)."""
    with self._reporting_disk_full():
      self._manager.wait_until_finished()

  def close(self) -> None:
    with self._reporting_disk_full():
      self._manager.close()


def _leaf_name(path: tuple) -> str:
  """'params/blocks_0/attn/qkv/kernel' for a key path (dict keys, attributes and indices)."""
  parts = []
  for key in path:
    for attr in ('key', 'name', 'idx'):
      if hasattr(key, attr):
        parts.append(str(getattr(key, attr)))
        break
    else:
      parts.append(str(key))
  return '/'.join(parts)


def _leaf_shapes(tree: Any) -> dict[str, tuple[int, ...]]:
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {_leaf_name(path): tuple(np.shape(leaf) if not hasattr(leaf, 'shape') else leaf.shape)
          for path, leaf in leaves}


def _check_compatible(stored: Any, abstract_state: Any, what: str) -> None:
  """Raises IncompatibleCheckpointError (one line, the first differing leaves) when the stored
  tree metadata and the restore target differ in leaf names or shapes (dtypes may differ:
  restoring casts)."""
  saved, wanted = _leaf_shapes(stored), _leaf_shapes(abstract_state)
  differences = [f'{name}: saved {saved[name]}, model {wanted[name]}'
                 for name in sorted(saved.keys() & wanted.keys()) if saved[name] != wanted[name]]
  differences += [f'{name}: only in the model' for name in sorted(wanted.keys() - saved.keys())]
  differences += [f'{name}: only in the checkpoint' for name in sorted(saved.keys() - wanted.keys())]
  if differences:
    listed = '; '.join(differences[:_MAX_LISTED_LEAVES])
    more = len(differences) - _MAX_LISTED_LEAVES
    raise IncompatibleCheckpointError(
        f'{what} does not fit the model being trained ({len(differences)} differing leaves: '
        f'{listed}{f"; {more} more" if more > 0 else ""}); the model config changed since it was '
        'saved: rerun with the original config, or use a fresh --workdir to train the new model')


def _short_reason(error: BaseException) -> str:
  """The first line of an orbax/TensorStore error, without the JSON spec dumps it may carry."""
  text = str(error).strip().splitlines()[0] if str(error).strip() else ''
  text = text.split(' See full TensorStore details')[0]
  if len(text) > 240:
    text = text[:240] + '...'
  return f'{type(error).__name__}: {text}' if text else type(error).__name__


def _damaged_file(error: BaseException, root: str) -> str | None:
  """The file below `root` that an orbax/TensorStore error message names, if any."""
  found = re.findall(re.escape(root) + r'[^\s"\'<>,)]*', str(error))
  files = [f.rstrip('/:.') for f in found if os.path.isfile(f.rstrip('/:.'))]
  return files[-1] if files else (found[-1].rstrip('/:.') if found else None)


def _drop_abandoned_read_reports() -> None:
  """Drops the reports of orbax's abandoned parallel reads (call before reading a step).

  When one array of a damaged step fails to read, orbax raises that error, and its other
  in-flight reads are abandoned; Python reports each of them later as 'Exception ignored in
  <coroutine ...>' with dozens of lines of TensorStore spec, or as 'Event loop is closed'. The
  failure itself is still raised (and reported in one line); only these echoes are dropped.
  Installed once, process-wide; every other unraisable exception is reported as before.
  """
  global _REPORTS_DROPPED
  if _REPORTS_DROPPED:
    return
  previous = sys.unraisablehook

  def hook(unraisable):
    text = str(unraisable.exc_value)
    if not (text.startswith('Encountered error while reading array index')
            or (isinstance(unraisable.exc_value, RuntimeError)
                and text == 'Event loop is closed')):
      previous(unraisable)

  sys.unraisablehook = hook
  _REPORTS_DROPPED = True


_REPORTS_DROPPED = False


def _model_handler() -> ocp.CompositeCheckpointHandler:
  # Explicit item handlers so `metadata()` can read the params tree without restoring it.
  return ocp.CompositeCheckpointHandler(
      params=ocp.StandardCheckpointHandler(), metadata=ocp.JsonCheckpointHandler())


def is_export(path: str | os.PathLike) -> bool:
  """True when `path` is a folder written by `save_model` (it has the metadata item)."""
  path = os.fspath(path)
  return (os.path.isdir(os.path.join(path, 'metadata'))
          and os.path.isfile(os.path.join(path, '_CHECKPOINT_METADATA')))


def _file_sizes(folder: str) -> dict[str, int]:
  """{path relative to `folder`: bytes} of the files of an export (its own bookkeeping aside)."""
  sizes = {}
  for root, _, files in os.walk(folder):
    for name in files:
      relative = os.path.relpath(os.path.join(root, name), folder)
      if relative not in (EXPORT_SIZES_FILENAME, outputs.MARKER_FILENAME):
        sizes[relative] = os.path.getsize(os.path.join(root, name))
  return sizes


def _check_file_sizes(path: str) -> None:
  """Raises a one-line ValueError naming the first export file that is missing or whose size
  changed since `save_model` wrote it (exports older than the size record are not checked).

  Checked before orbax reads anything: a truncated file then never reaches orbax, whose
  abandoned parallel reads echo the failure in many lines."""
  record = os.path.join(path, EXPORT_SIZES_FILENAME)
  if not os.path.isfile(record):
    return
  try:
    with open(record) as f:
      expected = json.load(f)
  except (OSError, ValueError):
    raise ValueError(f'exported model {path}: {record} is unreadable; re-run the stage that wrote '
                     f'it (or delete {path} and rerun)') from None
  for relative, size in sorted(expected.items()):
    file = os.path.join(path, relative)
    found = os.path.getsize(file) if os.path.isfile(file) else None
    if found != size:
      state = 'is missing' if found is None else f'has {found} bytes, the export wrote {size}'
      raise ValueError(f'exported model {path}: {file} {state} (truncated or replaced); re-run the '
                       f'stage that wrote it (or delete {path} and rerun)')


def _sync(name: str) -> None:
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def first_non_finite_leaf(params: Any) -> str | None:
  """'name (k of n values)' of the first params leaf holding NaN or Inf, or None.

  Only float leaves are checked; every process must call it (global arrays are reduced).
  """
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    if not jnp.issubdtype(jnp.result_type(leaf), jnp.inexact):  # bfloat16 included
      continue
    bad = int(jax.device_get(jnp.sum(~jnp.isfinite(leaf))))
    if bad:
      return f'{_leaf_name(path)} ({bad} of {np.size(leaf)} values)'
  return None


def save_model(path: str | os.PathLike, *, kind: str, config: Mapping[str, Any], params: Any,
               extra: Mapping[str, Any] | None = None) -> None:
  """Exports a frozen model: `params` pytree plus JSON metadata `{'kind', 'config', 'extra'}`.

  Replaces an existing export at `path` atomically: the new export is written next to it
  (`<path>.saving`) and renamed into place once complete, so an interrupted export leaves the
  previous one intact. `config`/`extra` may hold numpy arrays (e.g. normalisation stats); they
  come back as numpy arrays from `load_model`. Multi-process jobs: every process calls it.

  Raises:
    ValueError: `path` is a file or a non-empty folder that is not an export (never deleted),
      or `params` hold NaN/Inf (a diverged model is never exported).
    DiskFullError: less room than the params' bytes, or the write ran out of space (the
      previous export, if any, is kept).
  """
  path = os.path.abspath(os.fspath(path))
  if os.path.exists(path) and not is_export(path) and (
      not os.path.isdir(path) or set(os.listdir(path)) - {outputs.MARKER_FILENAME}):
    raise ValueError(f'refusing to export a model to {path}: it exists and is not an exported '
                     'model (its files would be replaced); choose another path')
  bad = first_non_finite_leaf(params)
  if bad is not None:
    raise ValueError(f'refusing to export a model to {path}: params hold non-finite values at '
                     f'{bad}; training diverged (lower the learning rate)')
  metadata = {'kind': str(kind), 'config': _to_json(config), 'extra': _to_json(extra or {})}
  staging = path + '.saving'  # the same name on every process: orbax saves collectively
  if jax.process_index() == 0 and os.path.exists(staging):
    shutil.rmtree(staging)  # left by an interrupted export
  _remove_partial_writes(os.path.dirname(staging), os.path.basename(staging))  # and orbax's
  _sync('jepa_jax_save_model_clean')
  need = tree_nbytes(params)
  check_free_space(path, need)
  try:
    with ocp.Checkpointer(_model_handler()) as checkpointer:
      checkpointer.save(staging, args=ocp.args.Composite(
          params=ocp.args.StandardSave(params), metadata=ocp.args.JsonSave(metadata)))
    if jax.process_index() == 0:
      outputs.write_json(os.path.join(staging, EXPORT_SIZES_FILENAME), _file_sizes(staging))
  except Exception as e:  # pylint: disable=broad-except  # orbax re-raises many types
    if not outputs.is_disk_full(e):
      raise
    out_of_inodes = _free_inodes(path) == 0  # before the partial export is removed
    if jax.process_index() == 0:
      shutil.rmtree(staging, ignore_errors=True)
    _remove_partial_writes(os.path.dirname(staging), os.path.basename(staging))
    raise _disk_full_error(path, need, None, out_of_inodes) from None
  if jax.process_index() == 0:
    marker = os.path.join(path, outputs.MARKER_FILENAME)
    if os.path.isfile(marker):  # a folder marked by outputs.prepare_output_dir stays marked
      shutil.copy2(marker, os.path.join(staging, outputs.MARKER_FILENAME))
    replaced = path + '.replaced'
    if os.path.exists(replaced):
      shutil.rmtree(replaced)
    if os.path.exists(path):
      os.rename(path, replaced)
    os.rename(staging, path)
    if os.path.exists(replaced):
      shutil.rmtree(replaced)
  _sync('jepa_jax_save_model_done')


def load_model(path: str | os.PathLike, expected_kind: str | None = None
               ) -> tuple[str, dict, Any, dict]:
  """Loads an export written by `save_model`.

  Params are restored as arrays on the default device; place them with `jax.device_put`.

  Returns:
    `(kind, config, params, extra)`.
  """
  path = os.path.abspath(os.fspath(path))
  if not os.path.isdir(path):
    raise FileNotFoundError(f'no exported model at {path}: directory does not exist; run the stage '
                            'that exports it, or pass the right path')
  if not os.path.isdir(os.path.join(path, 'metadata')):
    raise ValueError(f'{path} is not an exported model (no metadata item); export it with '
                     'jepa_jax.checkpoint.save_model')
  _check_file_sizes(path)
  with ocp.Checkpointer(_model_handler()) as checkpointer:
    try:
      metadata = checkpointer.restore(
          path, args=ocp.args.Composite(metadata=ocp.args.JsonRestore()))['metadata']
    except Exception as e:  # pylint: disable=broad-except  # orbax raises many types
      raise _export_error(path, 'metadata', e) from None
    if not isinstance(metadata, Mapping) or 'kind' not in metadata:
      raise ValueError(f'{path} is not an exported model (metadata has no "kind"); re-export it '
                       'with jepa_jax.checkpoint.save_model')
    kind = metadata['kind']
    if expected_kind is not None and kind != expected_kind:
      raise ValueError(f'{path} holds a {kind!r} model, expected {expected_kind!r}')
    try:
      tree_meta = checkpointer.metadata(path).item_metadata['params']
      device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
      target = jax.tree_util.tree_map(
          lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), tree_meta.tree)
      _drop_abandoned_read_reports()
      params = checkpointer.restore(
          path, args=ocp.args.Composite(params=ocp.args.StandardRestore(target)))['params']
    except Exception as e:  # pylint: disable=broad-except  # corrupt files: many error types
      raise _export_error(path, 'params', e) from None
  bad = first_non_finite_leaf(params)
  if bad is not None:
    raise ValueError(f'exported model {path} holds non-finite params at {bad}; the stage that '
                     'wrote it diverged: retrain it (e.g. with a lower learning rate)')
  return kind, _from_json(metadata['config']), params, _from_json(metadata['extra'])


def _export_error(path: str, item: str, error: BaseException) -> ValueError:
  """One-line error for a damaged export: the file (when the error names one) and the fix."""
  where = _damaged_file(error, os.path.join(path, item)) or os.path.join(path, item)
  return ValueError(f'exported model {path}: {item} are missing or corrupt at {where} '
                    f'({_short_reason(error)}); re-run the stage that wrote it (or delete {path} '
                    'and rerun)')
