"""The stage harness: what every training stage shares, written once.

`run_stage(stage, config, workdir)` takes a `Stage` (the stage's own init, step, loader and
settings) and does the rest: the mesh and partition rules of the config, `eval_shape` ->
shardings -> jitted init, the donated jitted step, the per-host batch check, the loader shard of
this process, the checkpointer (state + grain iterator + config) and the loop.

`run_train_loop` restores the latest checkpoint (params, optimiser state and iterator position)
or starts from the given state, steps to `num_steps`, logs a progress line and TensorBoard
scalars every `log_every` steps, saves periodically and always at the end. It stops with one
line at the first log (or save) step whose metrics are not finite, before any checkpoint of
that state is written, and on a preemption signal it saves and stops.

Also here: `TrainLoopConfig`, the optimiser and loop settings every trainer's config section
shares (stage 1, stage 2, LeWM); the optimiser it builds (AdamW on matrices only, clipping, lr
and weight-decay schedules); EMA.
"""

from __future__ import annotations

import dataclasses
import math
import os
import signal
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from jax.experimental import multihost_utils

from jepa_jax import config_diff, config_sections, console, sharding
from jepa_jax.checkpoint import TrainCheckpointer, abstract_like
from jepa_jax.checkpoint import progress as run_progress

SCHEDULES = ('constant', 'warmup_cosine')
# Compute dtypes of a trainer's forward and backward pass (params and optimiser state stay float32).
DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainLoopConfig:
  """The optimiser and loop settings of a trainer's config section, one set of names for every
  trainer (`PretrainConfig`, `WorldModelConfig`, `LeWMConfig` inherit it; each redeclares a
  field only where its paper value differs from the default here).

  batch_size: global batch (split over processes and the mesh's data axes).
  num_steps: optimisation steps of the whole run (a resumed run continues to it).
  lr, schedule ('constant' or 'warmup_cosine', see `make_schedule`), warmup_steps,
    final_lr_ratio (the cosine's end, a fraction of lr): the learning rate.
  weight_decay: AdamW's decoupled decay, on matrices only; with weight_decay_start (not None)
    it follows a cosine from weight_decay_start to weight_decay over the run.
  grad_clip_norm: global-norm gradient clipping (0 = off).
  dtype: compute dtype, a key of DTYPES (params and optimiser state stay float32).
  log_every, checkpoint_every, max_to_keep: progress line + TensorBoard scalars, checkpoint
    interval (steps) and checkpoints kept.
  """
  # The config section's name in messages ('pretrain', 'world_model', 'lewm').
  SECTION: ClassVar[str] = 'train'
  batch_size: int
  num_steps: int
  lr: float = 1e-3
  schedule: str = 'constant'
  warmup_steps: int = 0
  final_lr_ratio: float = 0.0
  weight_decay: float = 1e-6
  weight_decay_start: float | None = None
  grad_clip_norm: float = 1.0
  dtype: str = 'float32'
  log_every: int = 100
  checkpoint_every: int = 1000
  max_to_keep: int = 2

  def __post_init__(self):
    section = self.SECTION
    config_sections.require_positive(self, section, (
        'batch_size', 'num_steps', 'log_every', 'checkpoint_every', 'max_to_keep'))
    if self.schedule not in SCHEDULES:
      raise ValueError(f'{section}.schedule={self.schedule!r}; choose one of {SCHEDULES}')
    if self.dtype not in DTYPES:
      raise ValueError(f'{section}.dtype={self.dtype!r}; choose one of {tuple(DTYPES)}')
    for name in ('lr', 'warmup_steps', 'final_lr_ratio', 'weight_decay', 'grad_clip_norm'):
      if getattr(self, name) < 0:
        raise ValueError(f'{section}.{name} must be >= 0, got {getattr(self, name)}')


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


def cosine_ramp(start: float, end: float, total_steps: int) -> optax.Schedule:
  """`start -> end` along a half cosine over `total_steps`, then `end` (either direction)."""
  if total_steps is None or total_steps < 1:
    raise ValueError(f'a weight-decay schedule needs total_steps >= 1, got {total_steps}')

  def schedule(step):
    frac = jnp.minimum(step / total_steps, 1.0)
    return end + (start - end) * 0.5 * (1.0 + jnp.cos(jnp.pi * frac))
  return schedule


def _scheduled_weight_decay(schedule: optax.Schedule) -> optax.GradientTransformation:
  """`u <- u + wd_t * p` with `wd_t = schedule(t)` (optax's add_decayed_weights takes a float)."""

  def init(params):
    del params
    return optax.ScaleByScheduleState(count=jnp.zeros([], jnp.int32))

  def update(updates, state, params):
    wd = schedule(state.count)
    updates = jax.tree_util.tree_map(lambda u, p: u + wd * p, updates, params)
    return updates, optax.ScaleByScheduleState(count=optax.safe_int32_increment(state.count))
  return optax.GradientTransformation(init, update)


def adamw(*, learning_rate: float, weight_decay: float = 0.0, grad_clip_norm: float | None = 1.0,
          schedule: str = 'constant', warmup_steps: int = 0, total_steps: int | None = None,
          final_lr_ratio: float = 0.0, weight_decay_start: float | None = None, b1: float = 0.9,
          b2: float = 0.999, eps: float = 1e-8) -> optax.GradientTransformation:
  """AdamW with decoupled weight decay on matrices only, after global-norm gradient clipping.

  Update per parameter p with clipped gradient g (Adam moments m, v, bias-corrected m^, v^):
  `p <- p - lr_t * (m^ / (sqrt(v^) + eps) + wd_t * p * [ndim(p) >= 2])`, where wd_t =
  `weight_decay`, or with `weight_decay_start` a cosine from it to `weight_decay` over
  `total_steps` (the reference's 1e-7 -> 1e-6). `grad_clip_norm=None` or 0 disables clipping.
  """
  lr = make_schedule(learning_rate=learning_rate, schedule=schedule, warmup_steps=warmup_steps,
                     total_steps=total_steps, final_lr_ratio=final_lr_ratio)
  if weight_decay_start is None:
    optimizer = optax.adamw(lr, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay,
                            mask=decay_mask)
  else:
    decay = _scheduled_weight_decay(cosine_ramp(weight_decay_start, weight_decay, total_steps))
    optimizer = optax.chain(optax.scale_by_adam(b1=b1, b2=b2, eps=eps),
                            optax.masked(decay, decay_mask), optax.scale_by_learning_rate(lr))
  if not grad_clip_norm:
    return optimizer
  return optax.chain(optax.clip_by_global_norm(grad_clip_norm), optimizer)


def learning_rate_schedule(cfg: TrainLoopConfig) -> optax.Schedule:
  """The learning rate of `cfg`'s run, step -> lr (`make_schedule`)."""
  return make_schedule(learning_rate=cfg.lr, schedule=cfg.schedule,
                       warmup_steps=cfg.warmup_steps, total_steps=cfg.num_steps,
                       final_lr_ratio=cfg.final_lr_ratio)


def make_optimizer(cfg: TrainLoopConfig) -> optax.GradientTransformation:
  """The optimiser of every trainer: `adamw` with `cfg`'s lr schedule, weight decay (and its
  cosine from weight_decay_start), gradient clipping over the run's num_steps."""
  return adamw(learning_rate=cfg.lr, weight_decay=cfg.weight_decay,
               grad_clip_norm=cfg.grad_clip_norm, schedule=cfg.schedule,
               warmup_steps=cfg.warmup_steps, total_steps=cfg.num_steps,
               final_lr_ratio=cfg.final_lr_ratio, weight_decay_start=cfg.weight_decay_start)


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


class NonFiniteError(ValueError):
  """Training produced a non-finite loss, gradient norm or parameter (a ValueError, so that
  the binaries report it in one line like every other bad setting)."""


def nonfinite_leaves(tree: Any) -> list[str]:
  """'/'-joined paths of the leaves of `tree` that hold a NaN or an infinity."""
  bad = []
  for path, leaf in jax.tree_util.tree_flatten_with_path(jax.device_get(tree))[0]:
    if np.issubdtype(np.asarray(leaf).dtype, np.inexact) and not np.all(np.isfinite(leaf)):
      bad.append(sharding.path_to_str(path))
  return bad


def check_finite_params(params: Any, what: str) -> None:
  """Raises NonFiniteError (one line, naming the first leaves) if `params` is not finite."""
  bad = nonfinite_leaves(params)
  if bad:
    raise NonFiniteError(f'{what} has non-finite values in {len(bad)} arrays ({", ".join(bad[:3])}'
                         f'{", ..." if len(bad) > 3 else ""}); retrain it (e.g. with a lower lr)')


class PreemptionWatch:
  """True once the job is asked to stop: SIGTERM on this host (preemptible VMs, SLURM) or, in a
  multi-process job, jax's preemption sync point (every process stops at the same step)."""

  def __init__(self):
    self._signalled = False
    self._previous = None
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not the main thread: rely on the multi-process sync point only
      pass

  def _handle(self, signum, frame):
    del signum, frame
    self._signalled = True

  def reached(self, step: int) -> bool:
    if jax.process_count() > 1:
      return bool(multihost_utils.reached_preemption_sync_point(step))
    return self._signalled

  def close(self) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


@dataclasses.dataclass
class LoopInfo:
  """What a run of `run_train_loop` measured: the step it stopped at, why (`'done'`,
  `'preempted'`, `'data_exhausted'`), wall seconds, and steps/s after the first log interval
  (which includes compilation; None with fewer than two log lines)."""
  step: int = 0
  stopped: str = 'done'
  seconds: float = 0.0
  steps_per_sec: float | None = None


def run_train_loop(*, train_step: Callable[[Any, Any], tuple[Any, Mapping[str, Any]]],
                   state: Any, data_iter: Iterator, checkpointer: TrainCheckpointer | None,
                   num_steps: int, log_every: int, workdir: str | os.PathLike,
                   shard_fn: Callable[[Any], Any] = lambda batch: batch,
                   eval_fn: Callable[[Any, int], Mapping[str, Any]] | None = None,
                   eval_every: int | None = None, stage_name: str = 'training',
                   info: LoopInfo | None = None) -> tuple[Any, dict]:
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
    eval_fn: `(state, step) -> scalars`, run every `eval_every` steps and at the end; logged
      under `eval/`.
    stage_name: names the stage in the non-finite error (e.g. 'world_model').
    info: a `LoopInfo` filled in place (stop step and reason, seconds, steps/s).

  Checkpoint step numbers count completed steps: checkpoint k holds the state after k steps.
  `checkpoint.progress` follows the loop (stage, step, checkpoint folder), so a full disk or a
  stopped peer process is reported with the step a rerun resumes from; a disk without room for
  the next checkpoint step stops the run before its first step.
  Metrics are checked at every log step and before every save: the first non-finite one raises
  NonFiniteError naming the step range, and that state is never saved.

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
  info = LoopInfo() if info is None else info
  start = 0
  if checkpointer is not None:
    restored = checkpointer.restore_or_none(abstract_like(state), data_iter)
    if restored is not None:
      state, start = restored, checkpointer.latest_step()
      logging.info('resumed from %s at step %d', checkpointer.directory, start)
  run_progress.stage, run_progress.step = stage_name, start
  run_progress.directory = None if checkpointer is None else checkpointer.directory
  if checkpointer is not None and start < num_steps:  # a full disk stops before any step runs
    every = checkpointer.save_interval_steps
    checkpointer.check_room(min(num_steps, (start // every + 1) * every), state)
  writer = MetricsWriter(workdir)
  watch = PreemptionWatch()
  progress = console.Progress(num_steps, stage_name, initial=start)
  metrics: dict = {}
  step = finite_step = start
  log_marks = []  # (time, step) at each log line, for steps/s
  loop_start = time.perf_counter()

  def host_metrics(step_metrics, step):
    nonlocal finite_step
    values = {k: float(v) for k, v in jax.device_get(step_metrics).items()}
    bad = sorted(k for k, v in values.items() if not math.isfinite(v))
    if bad:
      raise NonFiniteError(
          f'{stage_name}: non-finite {", ".join(bad)} between steps {finite_step} and {step} '
          f'(nothing from this run after step {finite_step} is saved); likely cause: a too '
          f'high learning rate or diverging loss: lower --config.{stage_name}.lr')
    finite_step = step
    return values

  try:
    tick, tick_step = time.perf_counter(), start
    while step < num_steps:
      try:
        batch = next(data_iter)
      except StopIteration:
        logging.warning('data iterator exhausted after %d steps (asked for %d)', step, num_steps)
        info.stopped = 'data_exhausted'
        break
      state, step_metrics = train_step(state, shard_fn(batch))
      step += 1
      run_progress.step = step
      progress.update()
      preempted = watch.reached(step)
      saving = checkpointer is not None and (preempted or checkpointer.should_save(step))
      if step % log_every == 0 or step == num_steps or saving:
        metrics = host_metrics(step_metrics, step)
      if step % log_every == 0 or step == num_steps:
        now = time.perf_counter()
        steps_per_sec = (step - tick_step) / max(now - tick, 1e-9)
        tick, tick_step = now, step
        log_marks.append((now, step))
        if jax.process_index() == 0:
          logging.info('step %d/%d %s steps/s=%.2f', step, num_steps,
                       _format_metrics(metrics), steps_per_sec)
        writer.write_scalars(step, {**metrics, 'steps_per_sec': steps_per_sec})
        progress.set_postfix(**{k: f'{v:.4g}' for k, v in metrics.items()
                                if k in ('loss', 'grad_norm')})
      if eval_fn is not None and (step % eval_every == 0 or step == num_steps):
        eval_metrics = {f'eval/{k}': float(v) for k, v in eval_fn(state, step).items()}
        if jax.process_index() == 0:
          logging.info('step %d eval %s', step, _format_metrics(eval_metrics))
        writer.write_scalars(step, eval_metrics)
      if saving:
        checkpointer.save(step, state, data_iter, force=preempted)
      if preempted:
        logging.warning('%s: preemption signal at step %d: saved, stopping', stage_name, step)
        info.stopped = 'preempted'
        break
    if step > start:
      metrics = host_metrics(step_metrics, step)
    if checkpointer is not None and step > start and checkpointer.latest_step() != step:
      checkpointer.save(step, state, data_iter, force=True)
  finally:
    # Also on an exception: let an in-flight async save land complete.
    if checkpointer is not None:
      checkpointer.wait()
    writer.close()
    watch.close()
    progress.close()
  info.step, info.seconds = step, time.perf_counter() - loop_start
  if len(log_marks) >= 2:
    (t0, s0), (t1, s1) = log_marks[0], log_marks[-1]
    info.steps_per_sec = (s1 - s0) / max(t1 - t0, 1e-9)
  return state, metrics


# ----------------------------------------------------------------------------- stage harness


@dataclasses.dataclass
class Stage:
  """A training stage's own parts, as `run_stage` needs them.

  loop: the stage's config section (a `TrainLoopConfig`): global batch, num_steps and the
    logging / checkpoint settings; its SECTION names the stage in messages.
  init_fn: `key -> state` (a pytree; its leaves are placed by the partition rules).
  step_fn: `(state, *frozen, batch) -> (state, metrics)`: pure, jitted here with the state
    donated; metrics are scalars.
  make_loader: `(per_host_batch_size, shard_index, shard_count) -> grain iterator` of host
    batches.
  frozen: extra step inputs that are not trained (e.g. the frozen encoder's params), placed by
    the partition rules and never donated.
  model_inputs: host batch -> the arrays the step reads (the rest never goes to the device).
  settings: the top-level config sections whose values a checkpoint must share to be resumed
    (besides the stage's own section; its num_steps and logging/saving intervals may change).
  eval_fn, eval_every: see `run_train_loop`; on_init: called as
    `on_init(state, mesh, frozen)` with the initial state (before the first, donating step: e.g.
    to copy the random initialisation), the mesh and the placed frozen inputs (for eval_fn).
  """
  loop: TrainLoopConfig
  init_fn: Callable[[jax.Array], Any]
  step_fn: Callable[..., tuple[Any, Mapping[str, Any]]]
  make_loader: Callable[[int, int, int], Iterator]
  frozen: tuple = ()
  model_inputs: Callable[[dict], dict] = lambda batch: batch
  settings: tuple = ('env', 'seed', 'data')
  eval_fn: Callable[[Any, int], Mapping[str, Any]] | None = None
  eval_every: int | None = None
  on_init: Callable[[Any, jax.sharding.Mesh, tuple], None] | None = None

  @property
  def name(self) -> str:
    """The config section ('pretrain', 'world_model', 'lewm'), for messages."""
    return self.loop.SECTION


@dataclasses.dataclass
class StageResult:
  """state: the final train state; metrics: the last step's (host floats); mesh; frozen: the
  frozen inputs as placed on the mesh; loop: the `LoopInfo` of this run."""
  state: Any
  metrics: dict
  mesh: jax.sharding.Mesh
  frozen: tuple
  loop: LoopInfo


def per_host_batch_size(global_batch: int, mesh: jax.sharding.Mesh, what: str) -> int:
  """The batch one process loads, after checking that `global_batch` splits evenly over the
  processes and the mesh's data axes (one-line error naming the config key otherwise)."""
  data_size = int(np.prod([mesh.shape[a] for a in sharding.batch_axes(mesh)]))
  processes = jax.process_count()
  if global_batch % processes or global_batch % data_size:
    raise ValueError(f'{what}={global_batch} must be divisible by the {processes} processes and '
                     f'the {data_size} devices of the mesh data axes; change {what}')
  return global_batch // processes


def partition_rules(config: Any) -> list[tuple]:
  """The config's partition rules as `(regex, spec entries)` tuples."""
  return [tuple(rule) for rule in config.partition_rules]


def abstract_state(init_fn: Callable[[jax.Array], Any], seed: int, mesh: jax.sharding.Mesh,
                   rules: list[tuple]) -> Any:
  """The state `init_fn(PRNGKey(seed))` returns, as `jax.ShapeDtypeStruct`s that carry the
  shardings the partition `rules` give on `mesh` (from `eval_shape`: nothing is computed)."""
  shapes = jax.eval_shape(init_fn, jax.random.PRNGKey(seed))
  return jax.tree_util.tree_map(
      lambda leaf, where: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=where), shapes,
      sharding.param_shardings(shapes, mesh, rules))


def init_sharded(init_fn: Callable[[jax.Array], Any], seed: int, mesh: jax.sharding.Mesh,
                 rules: list[tuple]) -> tuple[Any, Any]:
  """`init_fn(PRNGKey(seed))` evaluated by one jit straight into the layout the partition
  `rules` give on `mesh` (`abstract_state`, so no full copy ever lands on one device).

  Returns:
    `(state, state_shardings)`.
  """
  key = jax.random.PRNGKey(seed)
  state_shardings = jax.tree_util.tree_map(
      lambda leaf: leaf.sharding, abstract_state(init_fn, seed, mesh, rules))
  return jax.jit(init_fn, out_shardings=state_shardings)(key), state_shardings


def jit_step(step_fn: Callable, state_shardings: Any, frozen_shardings: tuple,
             mesh: jax.sharding.Mesh) -> Callable:
  """`step_fn(state, *frozen, batch)` jitted for `mesh`: the state laid out by
  `state_shardings` and donated, the frozen inputs by theirs, the batch split over the data
  axes, the metrics replicated."""
  return jax.jit(step_fn,
                 in_shardings=(state_shardings, *frozen_shardings, sharding.data_sharding(mesh)),
                 out_shardings=(state_shardings, sharding.replicated(mesh)), donate_argnums=0)


# Settings of a stage's own section that a resumed run may change: they do not change what
# the steps compute (num_steps extends or shortens the run; a schedule then follows it), only
# logging, saving and the measures taken beside and after training.
RESUMABLE_CHANGES = ('num_steps', 'log_every', 'checkpoint_every', 'max_to_keep', 'eval_every',
                     'eval_horizon', 'eval_batch_size', 'eval_num_batches', 'geometry_every',
                     'geometry_frames', 'probe_train_trajectories', 'probe_val_trajectories',
                     'probe_batch_size')


def check_resumable(stage: Stage, stored: Any, config: Any, directory: str) -> None:
  """One-line ValueError when the checkpoints in `directory` were written with other settings
  than `config` (in `stage.settings` and the stage's own section)."""
  if stored is None:
    return
  keys = (*stage.settings, stage.name)
  changed = config_diff.differences(
      config_diff.select(stored, keys), config_diff.select(config, keys),
      ignore=tuple(f'{stage.name}.{k}' for k in RESUMABLE_CHANGES))
  if changed:
    raise ValueError(
        f'{stage.name}: the checkpoints in {directory} were written with other settings '
        f'({"; ".join(changed[:4])}{"; ..." if len(changed) > 4 else ""}); use a new --workdir, '
        f'or move {directory} away to start over')


def run_stage(stage: Stage, config: Any, workdir: str) -> StageResult:
  """Runs (or resumes) `stage` on the mesh of `config` and checkpoints it under `workdir`.

  config: the experiment config (`seed`, `mesh`, `partition_rules`; the whole config is stored
  with every checkpoint). Checkpoints go to `<workdir>/checkpoints`, TensorBoard to `workdir`.
  A checkpoint written with other settings is never resumed (`check_resumable`).
  """
  mesh = sharding.make_mesh(dict(config.mesh))
  rules = partition_rules(config)
  loop = stage.loop
  per_host = per_host_batch_size(loop.batch_size, mesh, f'{stage.name}.batch_size')
  state, state_shardings = init_sharded(stage.init_fn, int(config.seed), mesh, rules)
  frozen_shardings = tuple(sharding.param_shardings(f, mesh, rules) for f in stage.frozen)
  frozen = tuple(jax.device_put(f, s) for f, s in zip(stage.frozen, frozen_shardings))
  step = jit_step(stage.step_fn, state_shardings, frozen_shardings, mesh)
  if stage.on_init is not None:
    stage.on_init(state, mesh, frozen)
  loader = stage.make_loader(per_host, jax.process_index(), jax.process_count())
  to_config = getattr(config, 'to_dict', None)
  checkpointer = TrainCheckpointer(
      os.path.join(workdir, 'checkpoints'), save_interval_steps=loop.checkpoint_every,
      max_to_keep=loop.max_to_keep, config=to_config() if to_config else config)
  try:
    check_resumable(stage, checkpointer.restore_config(), config, checkpointer.directory)
    latest = checkpointer.latest_step()
    if latest is not None and latest > loop.num_steps:
      raise ValueError(f'{stage.name}: {checkpointer.directory} already holds step {latest}, '
                       f'past {stage.name}.num_steps={loop.num_steps}; use a new --workdir, '
                       f'or num_steps >= {latest} to continue')
  except ValueError:
    checkpointer.close()
    raise
  info = LoopInfo()
  try:
    state, metrics = run_train_loop(
        train_step=lambda s, b: step(s, *frozen, b), state=state, data_iter=loader,
        checkpointer=checkpointer, num_steps=loop.num_steps, log_every=loop.log_every,
        workdir=workdir, shard_fn=lambda b: sharding.shard_batch(stage.model_inputs(b), mesh),
        eval_fn=stage.eval_fn,
        eval_every=(stage.eval_every or loop.num_steps) if stage.eval_fn else None,
        stage_name=stage.name, info=info)
  finally:
    checkpointer.close()
  return StageResult(state=state, metrics=metrics, mesh=mesh, frozen=frozen, loop=info)
