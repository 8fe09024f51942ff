"""Orbax checkpoints: resumable training checkpoints and exported frozen models.

Training checkpoints (`TrainCheckpointer`) hold three items per step, so a preempted job resumes
exactly: `state` (the train-state pytree: params, optimiser state, step, rng, ...), `data_iter`
(the grain iterator position) and `config` (JSON). Orbax writes each step into a temporary
directory (`<step>.orbax-checkpoint-tmp...`) and renames it once complete, so a half-written step
is never seen by `latest_step` and never restored.

Exported models (`save_model` / `load_model`) bridge the stages: a directory with the `params`
pytree and a JSON `metadata` item `{'kind', 'config', 'extra'}`, so a later stage rebuilds the
module from the checkpoint alone.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import grain.checkpoint as grain_checkpoint
import jax
import numpy as np
import orbax.checkpoint as ocp


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
    self._config = None if config is None else _to_json(config)
    policies = ocp.checkpoint_managers
    # Multiples of the interval, plus orbax's preemption save (multi-host jobs); unlike orbax's
    # default, no extra save at the first step a manager sees (every resume would add one).
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, create=True,
        save_decision_policy=policies.AnySavePolicy([
            policies.FixedIntervalPolicy(save_interval_steps),
            policies.PreemptionCheckpointingPolicy()]))
    self._manager = ocp.CheckpointManager(
        self.directory, options=options, item_names=('state', 'data_iter', 'config'))

  def latest_step(self) -> int | None:
    """Newest step: saved (or being saved) by this manager, or finished on disk; else None."""
    return self._manager.latest_step()

  def save(self, step: int, state: Any, data_iter: Any = None, force: bool = False) -> bool:
    """Saves `state` (and the iterator position) at `step` if due; returns whether it saved.

    Asynchronous: arrays are copied off the device, then written in the background; call
    `wait()` before reading the files.
    """
    items = {'state': ocp.args.StandardSave(state)}
    if data_iter is not None:
      items['data_iter'] = grain_checkpoint.CheckpointSave(data_iter)
    if self._config is not None:
      items['config'] = ocp.args.JsonSave(self._config)
    return self._manager.save(int(step), args=ocp.args.Composite(**items), force=force)

  def restore_or_none(self, abstract_state: Any, data_iter: Any = None) -> Any | None:
    """Restores the latest step into the layout of `abstract_state`, or returns None.

    Args:
      abstract_state: tree of `jax.ShapeDtypeStruct` with `sharding` set (see `abstract_like`)
        or concrete arrays; restored arrays land with those shardings.
      data_iter: grain iterator whose position is set in place to the saved one.

    Returns:
      The restored state, or None when the directory holds no finished checkpoint.
    """
    step = self._manager.latest_step()
    if step is None:
      return None
    items = {'state': ocp.args.StandardRestore(abstract_state)}
    if data_iter is not None:
      items['data_iter'] = grain_checkpoint.CheckpointRestore(data_iter)
    restored = self._manager.restore(step, args=ocp.args.Composite(**items))
    return restored['state']

  def restore_config(self) -> dict | None:
    """The JSON config stored with the latest step (None if no step or no config)."""
    step = self._manager.latest_step()
    if step is None or 'config' not in self._manager.item_metadata(step):
      return None
    restored = self._manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
    return _from_json(restored['config'])

  def wait(self) -> None:
    """Blocks until pending asynchronous saves are on disk."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()


def _model_handler() -> ocp.CompositeCheckpointHandler:
  # Explicit item handlers so `metadata()` can read the params tree without restoring it.
  return ocp.CompositeCheckpointHandler(
      params=ocp.StandardCheckpointHandler(), metadata=ocp.JsonCheckpointHandler())


def save_model(path: str | os.PathLike, *, kind: str, config: Mapping[str, Any], params: Any,
               extra: Mapping[str, Any] | None = None) -> None:
  """Exports a frozen model: `params` pytree plus JSON metadata `{'kind', 'config', 'extra'}`.

  Overwrites an existing export at `path`. `config`/`extra` may hold numpy arrays (e.g.
  normalisation stats); they come back as numpy arrays from `load_model`.
  """
  path = os.path.abspath(os.fspath(path))
  metadata = {'kind': str(kind), 'config': _to_json(config), 'extra': _to_json(extra or {})}
  with ocp.Checkpointer(_model_handler()) as checkpointer:
    checkpointer.save(path, args=ocp.args.Composite(
        params=ocp.args.StandardSave(params), metadata=ocp.args.JsonSave(metadata)), force=True)


def load_model(path: str | os.PathLike, expected_kind: str | None = None
               ) -> tuple[str, dict, Any, dict]:
  """Loads an export written by `save_model`.

  Params are restored as arrays on the default device; place them with `jax.device_put`.

  Returns:
    `(kind, config, params, extra)`.
  """
  path = os.path.abspath(os.fspath(path))
  if not os.path.isdir(path):
    raise FileNotFoundError(f'no exported model at {path}: directory does not exist')
  if not os.path.isdir(os.path.join(path, 'metadata')):
    raise ValueError(f'{path} is not an exported model (no metadata item); export it with '
                     'jepa_jax.checkpoint.save_model')
  with ocp.Checkpointer(_model_handler()) as checkpointer:
    try:
      metadata = checkpointer.restore(
          path, args=ocp.args.Composite(metadata=ocp.args.JsonRestore()))['metadata']
    except Exception as e:  # orbax raises several types for unreadable JSON
      raise ValueError(f'{path}: model metadata is unreadable ({type(e).__name__}: {e})') from e
    if not isinstance(metadata, Mapping) or 'kind' not in metadata:
      raise ValueError(f'{path} is not an exported model (metadata has no "kind")')
    kind = metadata['kind']
    if expected_kind is not None and kind != expected_kind:
      raise ValueError(f'{path} holds a {kind!r} model, expected {expected_kind!r}')
    try:
      tree_meta = checkpointer.metadata(path).item_metadata['params']
      device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
      target = jax.tree_util.tree_map(
          lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), tree_meta.tree)
      params = checkpointer.restore(
          path, args=ocp.args.Composite(params=ocp.args.StandardRestore(target)))['params']
    except Exception as e:  # corrupt/missing array files surface as many error types
      raise ValueError(f'{path}: model params are missing or corrupt '
                       f'({type(e).__name__}: {e})') from e
  return kind, _from_json(metadata['config']), params, _from_json(metadata['extra'])
