"""Stage-2 losses: teacher forcing plus the multistep ("2roll") rollout loss (docs/reference.md §4).

Everything here is written against a `predict_fn(z, actions, pe, rng) -> (z_next, pe_next)` with
  z (B, T, h, w, D) visual latents, actions (B, T, A) normalised model actions,
  pe (B, T, Pe) proprio embeddings or None, rng a PRNG key for dropout (may be ignored),
  pe_next (B, T, Pe) or, for a per-patch predictor (the AdaLN reference), (B, T, h, w, Pe):
  then every patch's prediction is supervised by the frame's embedding (the global mean over
  patches, as the reference's loss on the repeated target) and fed back per patch,
that is frame-causal (output t sees frames <= t) and whose positions restart at 0 in every call
(so the same function serves any window). Output t is the prediction of frame t + 1.
Because of causality, feeding frames 0..T-2 gives exactly the outputs 0..T-2 of a pass over all
T frames (`pred[:, :-1]` of the reference), so the teacher-forcing pass skips the last frame.
"""

import dataclasses

import jax
import jax.numpy as jnp

from jepa_jax.world_model.model import broadcast_proprio


@dataclasses.dataclass(frozen=True)
class LossConfig:
  """Weights of the stage-2 objective.

  l2_weight, l1_weight, cosine_weight: mix of mean squared error, mean absolute error and
    (1 - cosine similarity over the channel axis), applied to visual latents and proprio embeddings.
  proprio_weight: multiplier of the proprio-embedding term (the reference adds it with weight 1).
  rollout_steps: R. 1 = teacher forcing only; 2 = the paper's "2roll" objective
    `L_tf / (R + 1) + L_roll / R`.
  rollout_context: frames the rollout pass sees (the last `num_hist` = 3 frames).
  """
  l2_weight: float = 1.0
  l1_weight: float = 0.0
  cosine_weight: float = 0.0
  proprio_weight: float = 1.0
  rollout_steps: int = 2
  rollout_context: int = 3

  def __post_init__(self):
    if self.rollout_steps not in (1, 2):
      raise ValueError(f'rollout_steps must be 1 (teacher forcing) or 2 ("2roll"), got '
                       f'{self.rollout_steps}')
    if self.rollout_context < 2:
      raise ValueError(f'rollout_context must be >= 2 frames, got {self.rollout_context}')
    if min(self.l2_weight, self.l1_weight, self.cosine_weight, self.proprio_weight) < 0:
      raise ValueError('loss weights must be non-negative')


def latent_distance(pred, target, config: LossConfig):
  """Weighted L2/L1/cosine distance, each a global mean over all elements (scalar, float32).

  pred, target: same shape (..., C); the cosine term is taken over the last (channel) axis.
  """
  pred = pred.astype(jnp.float32)
  target = target.astype(jnp.float32)
  diff = pred - target
  loss = 0.0
  if config.l2_weight:
    loss += config.l2_weight * jnp.mean(jnp.square(diff))
  if config.l1_weight:
    loss += config.l1_weight * jnp.mean(jnp.abs(diff))
  if config.cosine_weight:
    eps = 1e-8
    cos = jnp.sum(pred * target, -1) / (
        jnp.maximum(jnp.linalg.norm(pred, axis=-1) * jnp.linalg.norm(target, axis=-1), eps))
    loss += config.cosine_weight * jnp.mean(1.0 - cos)
  return loss


def teacher_forcing_loss(predict_fn, z, actions, pe, config: LossConfig, rng=None):
  """One causal pass; output t is compared with frame t + 1 (MSE(pred[:, :-1], z[:, 1:])).

  Args: z (B, T, h, w, D), actions (B, T, A), pe (B, T, Pe) or None; T >= 2.
  Returns: (visual loss, proprio loss (0 without proprio), (pred_z, pred_pe)) where the
    predictions cover frames 1..T-1: (B, T-1, ...) (pred_pe per patch for a per-patch
    predictor). Targets are stop-gradient.
  """
  if z.shape[1] < 2:
    raise ValueError(f'teacher forcing needs clips of >= 2 frames, got {z.shape[1]}')
  pred_z, pred_pe = predict_fn(z[:, :-1], actions[:, :-1], None if pe is None else pe[:, :-1],
                               rng)
  visual = latent_distance(pred_z, jax.lax.stop_gradient(z[:, 1:]), config)
  proprio = jnp.zeros((), jnp.float32)
  if pe is not None:
    target = broadcast_proprio(pe[:, 1:], pred_pe)
    proprio = latent_distance(pred_pe, jax.lax.stop_gradient(target), config)
  return visual, proprio, (pred_z, pred_pe)


def _take_frame(x, index):
  """x[:, index] for a traced scalar `index`: (B, T, ...) -> (B, ...)."""
  return jax.lax.dynamic_index_in_dim(x, index, axis=1, keepdims=False)


def _slice_frames(x, start, length):
  """x[:, start:start + length] for a traced `start` and static `length`."""
  return jax.lax.dynamic_slice_in_dim(x, start, length, axis=1)


def rollout_loss(predict_fn, z, actions, pe, pred_z, pred_pe, t, config: LossConfig, rng=None):
  """Two-step rollout from prefix t (traced int32 scalar in [0, T - 3]).

  Context = true frames 0..t plus the model's own prediction of frame t + 1 (pred_z[:, t],
  pred_pe[:, t] from the teacher-forcing pass); all inputs are stop-gradient. The predictor sees
  the last `rollout_context` frames of that context with their actions; only its newest output
  (the prediction of frame t + 2) is supervised.

  Shapes stay fixed under jit: the input window has W = min(rollout_context, T - 1) frames and
  starts at s = max(0, t + 2 - W); when t + 2 < W the window also holds true frames after
  t + 1, which the frame-causal predictor cannot see from output t + 1 - s.

  Args: z, actions, pe as in `teacher_forcing_loss`; pred_z, pred_pe its predictions
    (B, >= t + 1, ...).
  Returns: (visual loss, proprio loss).
  """
  num_frames = z.shape[1]
  if num_frames < 3:
    raise ValueError(f'the rollout loss needs clips of >= 3 frames, got {num_frames}')
  sg = jax.lax.stop_gradient
  window = min(config.rollout_context, num_frames - 1)
  start = jnp.maximum(0, t + 2 - window)
  out_index = t + 1 - start

  def context(true, predicted):
    # Frames 0..T-2 with frame t + 1 replaced by the model's own prediction of it (true
    # per-frame proprio repeated over the patches when the prediction is per patch).
    true = broadcast_proprio(true[:, :num_frames - 1], predicted)
    new = _take_frame(predicted, t)[:, None].astype(true.dtype)
    return sg(jax.lax.dynamic_update_slice_in_dim(true, new, t + 1, axis=1))

  ctx_z = _slice_frames(context(z, pred_z), start, window)
  ctx_a = _slice_frames(actions[:, :num_frames - 1], start, window)
  ctx_pe = None if pe is None else _slice_frames(context(pe, pred_pe), start, window)
  roll_z, roll_pe = predict_fn(ctx_z, ctx_a, ctx_pe, rng)

  visual = latent_distance(_take_frame(roll_z, out_index), sg(_take_frame(z, t + 2)), config)
  proprio = jnp.zeros((), jnp.float32)
  if pe is not None:
    target = broadcast_proprio(_take_frame(pe, t + 2)[:, None], roll_pe[:, :1])[:, 0]
    proprio = latent_distance(_take_frame(roll_pe, out_index), sg(target), config)
  return visual, proprio


def world_model_loss(predict_fn, z, actions, pe, key, config: LossConfig):
  """The full stage-2 objective.

  Args: z (B, T, h, w, D), actions (B, T, A), pe (B, T, Pe) or None, key: PRNG key drawing the
    rollout prefix t ~ U{0, ..., T - 3} (one per batch) and the dropout keys of both passes.
  Returns: (loss scalar, metrics dict of scalars).
  """
  prefix_key, tf_key, roll_key = jax.random.split(key, 3)
  tf_visual, tf_proprio, (pred_z, pred_pe) = teacher_forcing_loss(
      predict_fn, z, actions, pe, config, tf_key)
  l_tf = tf_visual + config.proprio_weight * tf_proprio
  metrics = {'tf_visual': tf_visual, 'tf_proprio': tf_proprio}
  if config.rollout_steps == 1:
    loss = l_tf
  else:
    num_frames = z.shape[1]
    if num_frames < 3:
      raise ValueError(f'rollout_steps=2 needs clips of >= 3 frames, got {num_frames}; '
                       'use rollout_steps=1 or more frames')
    t = jax.random.randint(prefix_key, (), 0, num_frames - 2)
    roll_visual, roll_proprio = rollout_loss(
        predict_fn, z, actions, pe, pred_z, pred_pe, t, config, roll_key)
    l_roll = roll_visual + config.proprio_weight * roll_proprio
    r = config.rollout_steps
    loss = l_tf / (r + 1) + l_roll / r
    metrics.update(roll_visual=roll_visual, roll_proprio=roll_proprio, rollout_prefix=t)
  metrics['loss'] = loss
  return loss, metrics
