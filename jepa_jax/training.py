"""Pieces shared by every training stage: optimiser, EMA, metrics writer and the train loop.

`run_train_loop` is generic: the stage supplies a jitted `train_step(state, batch) ->
(state, metrics)`, a data iterator and a `TrainCheckpointer`; the loop restores the latest
checkpoint (params, optimiser state and iterator position) or starts from the given state,
steps to `num_steps`, logs a progress line and TensorBoard scalars every `log_every` steps,
saves periodically and always at the end.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax
import numpy as np
import optax
from absl import logging

from jepa_jax.checkpoint import TrainCheckpointer, abstract_like

SCHEDULES = ('constant', 'warmup_cosine')


def make_schedule(*, learning_rate: float, schedule: str = 'constant', warmup_steps: int = 0,
                  total_steps: int | None = None, final_lr_ratio: float = 0.0) -> optax.Schedule:
  """Learning-rate schedule (step -> lr).

  'constant': `learning_rate`, after an optional linear warmup from 0 over `warmup_steps`.
  'warmup_cosine': linear warmup 0 -> lr over `warmup_steps`, then cosine decay to
  `final_lr_ratio * lr` at `total_steps`.
  """
  if schedule not in SCHEDULES:
    raise ValueError(f'unknown lr schedule {schedule!r}; choose one of {SCHEDULES}')
  if schedule == 'constant':
    if warmup_steps <= 0:
      return optax.constant_schedule(learning_rate)
    return optax.linear_schedule(0.0, learning_rate, warmup_steps)
  if total_steps is None or total_steps <= warmup_steps:
    raise ValueError(f'warmup_cosine needs total_steps > warmup_steps, got total_steps='
                     f'{total_steps}, warmup_steps={warmup_steps}')
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=learning_rate, warmup_steps=warmup_steps,
      decay_steps=total_steps, end_value=final_lr_ratio * learning_rate)


def decay_mask(params: Any) -> Any:
  """True for matrices (ndim >= 2: kernels, embeddings), False for biases and norm scales."""
  return jax.tree_util.tree_map(lambda p: np.ndim(p) >= 2, params)


def make_optimizer(*, learning_rate: float, weight_decay: float = 0.0,
                   grad_clip_norm: float | None = 1.0, schedule: str = 'constant',
                   warmup_steps: int = 0, total_steps: int | None = None,
                   final_lr_ratio: float = 0.0, b1: float = 0.9, b2: float = 0.999,
                   eps: float = 1e-8) -> optax.GradientTransformation:
  """AdamW with decoupled weight decay on matrices only, after global-norm gradient clipping.

  Update per parameter p with clipped gradient g (Adam moments m, v, bias-corrected m^, v^):
  `p <- p - lr_t * (m^ / (sqrt(v^) + eps) + wd * p * [ndim(p) >= 2])`.
  `grad_clip_norm=None` or 0 disables clipping.
  """
  lr = make_schedule(learning_rate=learning_rate, schedule=schedule, warmup_steps=warmup_steps,
                     total_steps=total_steps, final_lr_ratio=final_lr_ratio)
  adamw = optax.adamw(lr, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, mask=decay_mask)
  if not grad_clip_norm:
    return adamw
  return optax.chain(optax.clip_by_global_norm(grad_clip_norm), adamw)


def ema_update(target: Any, online: Any, momentum: float | jax.Array) -> Any:
  """`target <- momentum * target + (1 - momentum) * online`, leaf by leaf."""
  return jax.tree_util.tree_map(
      lambda t, o: momentum * t + (1.0 - momentum) * o, target, online)


class MetricsWriter:
  """TensorBoard scalars (tensorboardX event files in `logdir`); a no-op on processes > 0."""

  def __init__(self, logdir: str | os.PathLike):
    self._writer = None
    if jax.process_index() == 0:
      from tensorboardX import SummaryWriter  # imported lazily: only process 0 writes
      self._writer = SummaryWriter(logdir=os.fspath(logdir))

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    if self._writer is None:
      return
    for name, value in scalars.items():
      self._writer.add_scalar(name, float(value), global_step=int(step))
    self._writer.flush()

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()


def _format_metrics(metrics: Mapping[str, Any]) -> str:
  return ' '.join(f'{k}={float(v):.4g}' for k, v in sorted(metrics.items()))


def run_train_loop(*, train_step: Callable[[Any, Any], tuple[Any, Mapping[str, Any]]],
                   state: Any, data_iter: Iterator, checkpointer: TrainCheckpointer | None,
                   num_steps: int, log_every: int, workdir: str | os.PathLike,
                   shard_fn: Callable[[Any], Any] = lambda batch: batch,
                   on_log: Callable[[int, dict], None] | None = None,
                   eval_fn: Callable[[Any, int], Mapping[str, Any]] | None = None,
                   eval_every: int | None = None) -> tuple[Any, dict]:
  """Runs (or resumes) training up to `num_steps` completed steps.

  Args:
    train_step: `(state, batch) -> (state, metrics)`, usually jitted with shardings and
      donated state; metrics are scalar arrays.
    state: freshly initialised state (sharded as training wants it); used as is when no
      checkpoint exists, otherwise only as the restore layout (shapes, dtypes, shardings).
    data_iter: iterator of host-local batches (a grain iterator so its position is saved).
    checkpointer: saves every `save_interval_steps` and at the end; None disables saving.
    num_steps: total number of optimisation steps of the run (not "more steps").
    log_every: progress line + TensorBoard scalars every this many steps.
    workdir: TensorBoard event files go here.
    shard_fn: host batch -> device batch (e.g. `functools.partial(shard_batch, mesh=mesh)`).
    on_log: called as `on_log(step, metrics)` with host floats at every log step.
    eval_fn: `(state, step) -> scalars`, run every `eval_every` steps and at the end; logged
      under `eval/`.

  Checkpoint step numbers count completed steps: checkpoint k holds the state after k steps.

  Returns:
    `(state, metrics)`: final state and the last step's metrics as host floats.
  """
  if log_every < 1:
    raise ValueError(f'log_every must be >= 1, got {log_every}')
  if eval_fn is not None and (eval_every is None or eval_every < 1):
    raise ValueError('eval_fn needs eval_every >= 1')
  if checkpointer is not None and not hasattr(data_iter, 'get_state'):
    raise ValueError(f'data_iter of type {type(data_iter).__name__} cannot be checkpointed; pass '
                     'a grain iterator (get_state/set_state) or checkpointer=None')
  start = 0
  if checkpointer is not None:
    restored = checkpointer.restore_or_none(abstract_like(state), data_iter)
    if restored is not None:
      state, start = restored, checkpointer.latest_step()
      logging.info('resumed from %s at step %d', checkpointer.directory, start)
  writer = MetricsWriter(workdir)
  metrics: dict = {}
  step = start
  try:
    tick, tick_step = time.perf_counter(), start
    while step < num_steps:
      try:
        batch = next(data_iter)
      except StopIteration:
        logging.warning('data iterator exhausted after %d steps (asked for %d)', step, num_steps)
        break
      state, step_metrics = train_step(state, shard_fn(batch))
      step += 1
      if step % log_every == 0 or step == num_steps:
        metrics = {k: float(v) for k, v in jax.device_get(step_metrics).items()}
        now = time.perf_counter()
        steps_per_sec = (step - tick_step) / max(now - tick, 1e-9)
        tick, tick_step = now, step
        if jax.process_index() == 0:
          logging.info('step %d/%d %s steps/s=%.2f', step, num_steps,
                       _format_metrics(metrics), steps_per_sec)
        writer.write_scalars(step, {**metrics, 'steps_per_sec': steps_per_sec})
        if on_log is not None:
          on_log(step, metrics)
      if eval_fn is not None and (step % eval_every == 0 or step == num_steps):
        eval_metrics = {f'eval/{k}': float(v) for k, v in eval_fn(state, step).items()}
        if jax.process_index() == 0:
          logging.info('step %d eval %s', step, _format_metrics(eval_metrics))
        writer.write_scalars(step, eval_metrics)
      if checkpointer is not None:
        checkpointer.save(step, state, data_iter)
    if checkpointer is not None and step > start and checkpointer.latest_step() != step:
      checkpointer.save(step, state, data_iter, force=True)
    if step > start:
      metrics = {k: float(v) for k, v in jax.device_get(step_metrics).items()}
  finally:
    # Also on an exception (e.g. preemption): let an in-flight async save land complete.
    if checkpointer is not None:
      checkpointer.wait()
    writer.close()
  return state, metrics
