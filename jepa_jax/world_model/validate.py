"""Open-loop rollout error on held-out trajectories, against the "latent stays constant" baseline.

From the first frame of a validation clip of k + 1 frames, the world model unrolls k steps with
the clip's actions (`WorldModel.unroll`, the planner's sliding window of 2). The error at step i
is the mean squared error between the predicted latent and the encoded true frame i (the
planner's L2 objective), for the visual latents and for the proprio embeddings; the constant
baseline predicts frame 0 for every step. A useful model has errors well below the baseline.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import jax
import jax.numpy as jnp
import numpy as np

from jepa_jax.data import pipeline
from jepa_jax.world_model import model as model_lib

CHANNELS = ('visual', 'proprio')


def make_rollout_error_fn(model, horizon: int):
  """Jitted `(params, batch) -> {'visual', 'constant_visual'[, 'proprio', 'constant_proprio']}`,
  each (horizon,) float32: batch-mean squared error at steps 1..horizon.

  batch: {'observations' uint8 (B, >= horizon + 1, S, S, 3), 'actions' f32 (B, >= horizon, A)
  z-scored, 'proprio' f32 (B, >= horizon + 1, P) z-scored}; params include the encoder.
  """
  if horizon < 1:
    raise ValueError(f'rollout horizon must be >= 1, got {horizon}')

  def errors(pred, true):
    # (B, H, ...) vs (B, H, ...) -> (H,): mean over batch and all latent elements.
    sq = jnp.square(pred.astype(jnp.float32) - true.astype(jnp.float32))
    return jnp.mean(sq, axis=(0,) + tuple(range(2, sq.ndim)))

  @jax.jit
  def rollout_errors(params, batch):
    frames = batch['observations'][:, :horizon + 1]
    if frames.shape[1] != horizon + 1:
      raise ValueError(f'validation clips have {batch["observations"].shape[1]} frames; '
                       f'a {horizon}-step rollout needs {horizon + 1}')
    z = model.encode(params, frames)
    pe = model.embed_proprio(params, batch['proprio'][:, :horizon + 1])
    pred_z, pred_pe = model.unroll(params, z[:, 0], None if pe is None else pe[:, 0],
                                   batch['actions'][:, :horizon])
    out = {'visual': errors(pred_z, z[:, 1:]),
           'constant_visual': errors(jnp.broadcast_to(z[:, :1], z[:, 1:].shape), z[:, 1:]),
           # Per-channel variance of the true latents over clips and patches, averaged: the
           # scale that makes the errors comparable across encoders (a mean predictor's error).
           'latent_variance': jnp.broadcast_to(
               jnp.mean(jnp.var(z[:, 1:].astype(jnp.float32), axis=(0, 2, 3)), axis=-1),
               (horizon,))}
    if pe is not None:
      out['proprio'] = errors(pred_pe, model_lib.broadcast_proprio(pe[:, 1:], pred_pe))
      out['constant_proprio'] = errors(jnp.broadcast_to(pe[:, :1], pe[:, 1:].shape), pe[:, 1:])
    return out

  return rollout_errors


def validation_batches(dataset_dir: str, *, horizon: int, batch_size: int, num_batches: int,
                       frameskip: int, seed: int, shard_index: int = 0,
                       shard_count: int = 1) -> Iterator[dict]:
  """Up to `num_batches` batches of (horizon + 1)-frame clips from the validation split (the
  same clips at every call: one shuffled epoch with a fixed seed)."""
  loader = pipeline.make_clip_loader(
      dataset_dir, 'validation', batch_size=batch_size, num_frames=horizon + 1,
      frameskip=frameskip, seed=seed, shuffle=True, num_epochs=1, shard_index=shard_index,
      shard_count=shard_count)
  for _, batch in zip(range(num_batches), loader):
    yield batch


def evaluate(rollout_fn, params, batches: Iterable[dict]) -> dict[str, np.ndarray]:
  """Averages `rollout_fn(params, batch)` over equally sized batches -> {name: (H,) float64}."""
  totals, count = None, 0
  for batch in batches:
    out = jax.device_get(rollout_fn(params, batch))
    out = {k: np.asarray(v, np.float64) for k, v in out.items()}
    totals = out if totals is None else {k: totals[k] + out[k] for k in totals}
    count += 1
  if not count:
    raise ValueError('no validation batches: the validation split has fewer clips than '
                     'eval_batch_size; lower world_model.eval_batch_size or eval_horizon')
  return {k: v / count for k, v in totals.items()}


def summary_entries(result: dict[str, np.ndarray]) -> dict:
  """{'rollout_error': {'visual': [per step], 'visual_mean', ['proprio', 'proprio_mean']},
  'constant_baseline': same keys, 'ratio_to_constant': {'visual_mean'[, 'proprio_mean']}}
  (JSON-ready floats; a ratio < 1 means the model beats the constant-latent baseline)."""
  model, constant, ratio = {}, {}, {}
  for channel in CHANNELS:
    if channel not in result:
      continue
    for out, key in ((model, channel), (constant, f'constant_{channel}')):
      out[channel] = [float(x) for x in result[key]]
      out[f'{channel}_mean'] = float(np.mean(result[key]))
    ratio[f'{channel}_mean'] = model[f'{channel}_mean'] / max(constant[f'{channel}_mean'], 1e-12)
  variance = float(np.mean(result['latent_variance']))
  normalised = {key: [float(x) / max(variance, 1e-12) for x in result[name]]
                for key, name in (('visual', 'visual'), ('constant_visual', 'constant_visual'))}
  return {'rollout_error': model, 'constant_baseline': constant, 'ratio_to_constant': ratio,
          'latent_variance': variance, 'rollout_error_normalised': normalised,
          'beats_constant_every_step': bool(np.all(result['visual'] < result['constant_visual']))}


def scalars(result: dict[str, np.ndarray]) -> dict[str, float]:
  """Flat TensorBoard scalars: '<name>_step<i>' (1-based) and '<name>_mean'."""
  flat = {}
  for name, values in result.items():
    for i, v in enumerate(values, start=1):
      flat[f'rollout_{name}_step{i}'] = float(v)
    flat[f'rollout_{name}_mean'] = float(np.mean(values))
  return flat


def format_table(result: dict[str, np.ndarray]) -> str:
  """Text table: per step, model vs constant-baseline MSE (and their ratio) per channel."""
  channels = [c for c in CHANNELS if c in result]
  header = 'step ' + ''.join(f'| {c:>8} model  constant  ratio ' for c in channels)
  lines = [header]
  horizon = len(result['visual'])
  rows = [(str(i + 1), i) for i in range(horizon)] + [('mean', None)]
  for label, i in rows:
    line = f'{label:>4} '
    for c in channels:
      m, k = result[c], result[f'constant_{c}']
      m, k = (np.mean(m), np.mean(k)) if i is None else (m[i], k[i])
      line += f'| {"":>8} {m:.4g}  {k:.4g}  {m / max(k, 1e-12):.3f} '
    lines.append(line)
  return '\n'.join(lines)
