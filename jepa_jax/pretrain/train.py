"""Stage 1: V-JEPA pretraining of the ViT encoder on an environment's trajectory clips
(docs/reference.md §1).

One optimisation step (`make_train_step`), for a batch of clips `(B, T, S, S, 3)` uint8 with
multi-block masks made in the data pipeline (`masks.MultiBlockMaskTransform`):

  1. preprocess: [0, 1], bilinear resize to the encoder size, per-channel normalisation;
  2. targets: the EMA target encoder sees the whole clip -> `(B, N, D)` tokens, LayerNorm-ed
     without affine parameters, no gradient;
  3. for every mask group g: the context encoder sees only its context tokens; the masked
     predictor (mask token g, plus each target tubelet's latent action with
     `latent_action_dim`, `latent_actions.py`) predicts the target tokens from them;
  4. loss: L1 between predictions and normalised targets at the target tokens, averaged over
     groups (`losses.masked_prediction_loss`). With `dense_loss` (V-JEPA 2.1) the predictor
     also predicts the context tokens and the targets concatenate several encoder depths;
  5. AdamW update of context encoder + predictor, then EMA of the target encoder with momentum
     `ema_momentum` (constant, V-JEPA 2) or a linear ramp to `ema_momentum_end` (V-JEPA 1).

`train(config, workdir, data_dir)` runs the whole stage on the stage harness
(`training.run_stage`: the mesh and partition rules of the config, the donated jitted step, the
per-host batch check, resumable Orbax checkpoints (params, EMA target, optimiser state, step, grain iterator), TensorBoard
metrics, export of the EMA target encoder to `<workdir>/encoder`, the linear probe, and the
latent geometry of the trained and the random-init encoder (`geometry.py`, also in TensorBoard
every `geometry_every` steps) with the cost-landscape picture `cost_landscape.png`.

`objective='vjepa_sigreg'` adds `sigreg_weight * SIGReg` of the context encoder's output to the
V-JEPA loss (docs/reference.md §9), with `sigreg_samples` choosing what one sample is: 'tokens'
(every context token of every group) or 'frames' (each clip's context tokens mean-pooled per
tubelet, `(T', B, D)`, as LeWM regularises its per-frame embeddings: pooled features vary only
with the clip's content, so position embeddings and the static background cannot satisfy the
regulariser; docs/reference.md §10).

Targets: the EMA target encoder (the reference), or with `target_gradient` the trained encoder
itself with gradients through the targets (LeWM has no EMA; with momentum 0 and no gradient it
is the stop-gradient "online" target).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from typing import Any, Callable, Sequence

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jepa_jax import checkpoint as checkpoint_lib
from jepa_jax import config_sections
from jepa_jax import envs
from jepa_jax import outputs
from jepa_jax import sharding as sharding_lib
from jepa_jax import training
from jepa_jax.data import pipeline
from jepa_jax.data import trajectories as trajectories_lib
from jepa_jax.models import masked_predictor as masked_predictor_lib
from jepa_jax.models import vit
from jepa_jax.pretrain import latent_actions as latent_actions_lib
from jepa_jax.pretrain import losses
from jepa_jax.pretrain import masks as masks_lib
from jepa_jax.representation import encoder as encoder_lib
from jepa_jax.representation import geometry
from jepa_jax.representation import probe as probe_lib
from jepa_jax.representation import sigreg as sigreg_lib
from jepa_jax.representation import slow_features
from jepa_jax.representation import standardise

# 'vjepa': docs/reference.md §1; 'vjepa_sigreg': plus sigreg_weight * SIGReg of the context encoder's
# output tokens (docs/reference.md §9). The end-to-end 'lewm' objective lives in jepa_jax.lewm.
OBJECTIVES = ('vjepa', 'vjepa_sigreg')
SIGREG_SAMPLES = ('tokens', 'frames')
# 'replace': the export outputs the k slowest directions only; 'append': the latent followed by
# them (`slow_features.appended_readout`).
SLOW_READOUT_MODES = ('replace', 'append')
# Masked-predictor keys `predictor_config` derives from the encoder and the mask groups.
DERIVED_PREDICTOR_KEYS = ('embed_dim', 'pos_embed', 'num_mask_tokens', 'out_dim')


@dataclasses.dataclass(frozen=True, kw_only=True)
class PretrainConfig(training.TrainLoopConfig):
  """The `pretrain` section of experiments/configs/wall.py.

  Loop, optimiser (AdamW; `schedule` 'warmup_cosine' by default, ending at
  `final_lr_ratio * lr`), compute dtype and checkpointing: `TrainLoopConfig` (batch_size and
  num_steps have no default). Clips: `num_frames` frames every `frameskip` env steps. EMA:
  `ema_momentum`, optionally ramped linearly to `ema_momentum_end` over the run. Masks:
  `mask_groups` as dicts of `masks.MaskGroupSpec` fields; fixed counts from the
  `mask_count_quantile` quantile. Predictor: `predictor` dict of `MaskedPredictorConfig` fields
  (width, depth, num_heads, ...; not the ones derived from the encoder, DERIVED_PREDICTOR_KEYS).
  Dense loss (V-JEPA 2.1): `dense_loss`, targets from encoder blocks `dense_target_layers`,
  context-token term (each token weighted by 1 / sqrt of its distance to the mask) weighted by
  `dense_context_weight`, ramped in linearly from 0 at step `dense_ramp_steps[0]` to full at
  `dense_ramp_steps[1]` (the reference: 15k -> 30k; (0, 0) = full from the start). Objective: `objective` in OBJECTIVES,
  SIGReg strength `sigreg_weight` on `sigreg_directions` random directions over
  `sigreg_samples` ('tokens' or per-tubelet pooled 'frames'). `target_gradient`: targets from
  the trained encoder, gradients through them (no EMA). `standardise`: context and target
  features standardised per channel over the batch (`representation.standardise`), folded
  into the export. `slow_readout`: k > 0 exports the latent's k slowest directions over the
  training video, commute-time weighted (`representation.slow_features`; 0 = the latent as
  trained); `slow_readout_mode` 'replace' exports them alone, 'append' after the latent, with
  total variance `slow_readout_weight ** 2` times the latent's. `latent_action_dim`: k > 0
  conditions every target token on a k-wide latent action inferred from its tubelet's and the
  first tubelet's pooled targets (`pretrain.latent_actions`; no environment actions; 0 = off).
  Geometry (`geometry.py`, trained and random-init encoder, TensorBoard `eval/`): every
  `geometry_every` steps (0 = only at the end) on `geometry_frames` rendered frames. Probe:
  frames of the first `probe_train_trajectories` train and `probe_val_trajectories` validation
  trajectories.
  """
  SECTION = 'pretrain'
  weight_decay: float = 0.04
  schedule: str = 'warmup_cosine'
  warmup_steps: int = 100
  grad_clip_norm: float = 0.0
  log_every: int = 50
  checkpoint_every: int = 500
  num_frames: int = 4
  frameskip: int = 5
  ema_momentum: float = 0.99925
  ema_momentum_end: float | None = None
  mask_groups: Sequence[dict] = (dict(num_blocks=8, spatial_scale=0.15),
                                 dict(num_blocks=2, spatial_scale=0.7))
  mask_count_quantile: float = 0.1
  predictor: dict = dataclasses.field(default_factory=lambda: dict(width=64, depth=2,
                                                                   num_heads=4))
  dense_loss: bool = False
  dense_target_layers: Sequence[int] = (-1,)
  dense_context_weight: float = 0.5
  dense_ramp_steps: Sequence[int] = (0, 0)
  objective: str = 'vjepa'
  sigreg_weight: float = 0.1
  sigreg_directions: int = 256
  sigreg_samples: str = 'tokens'
  target_gradient: bool = False
  standardise: bool = False
  slow_readout: int = 0
  slow_readout_mode: str = 'replace'
  slow_readout_weight: float = 1.0
  latent_action_dim: int = 0
  geometry_every: int = 0
  geometry_frames: int = 2000
  pixel_mean: Sequence[float] = vit.IMAGENET_MEAN
  pixel_std: Sequence[float] = vit.IMAGENET_STD
  probe_train_trajectories: int = 100
  probe_val_trajectories: int = 50
  probe_batch_size: int = 256

  def __post_init__(self):
    super().__post_init__()
    if self.objective not in OBJECTIVES:
      hint = (" (LeWM is a method of its own: --config.method=lewm)"
              if self.objective == 'lewm' else '')
      raise ValueError(f'pretrain.objective={self.objective!r} is not a stage-1 objective; '
                       f'choose one of {OBJECTIVES}{hint}')
    if self.slow_readout_mode not in SLOW_READOUT_MODES:
      raise ValueError(f'pretrain.slow_readout_mode={self.slow_readout_mode!r}; choose one of '
                       f'{SLOW_READOUT_MODES}')
    if self.slow_readout_weight <= 0:
      raise ValueError(f'pretrain.slow_readout_weight must be > 0, got '
                       f'{self.slow_readout_weight}')
    if self.sigreg_samples not in SIGREG_SAMPLES:
      raise ValueError(f'pretrain.sigreg_samples={self.sigreg_samples!r}; choose one of '
                       f'{SIGREG_SAMPLES}')
    if min(self.sigreg_weight, self.geometry_every, self.slow_readout,
           self.latent_action_dim) < 0:
      raise ValueError('pretrain.sigreg_weight, geometry_every, slow_readout and '
                       'latent_action_dim must be >= 0')
    config_sections.require_positive(self, 'pretrain', (
        'num_frames', 'frameskip', 'probe_train_trajectories', 'probe_val_trajectories',
        'sigreg_directions', 'geometry_frames'))
    predictor_keys = config_sections.field_names(masked_predictor_lib.MaskedPredictorConfig,
                                                 exclude=DERIVED_PREDICTOR_KEYS)
    config_sections.check_keys(self.predictor, predictor_keys, 'pretrain.predictor')
    for name in ('ema_momentum', 'ema_momentum_end'):
      value = getattr(self, name)
      if value is not None and not 0.0 <= value <= 1.0:
        raise ValueError(f'pretrain.{name} must be in [0, 1], got {value}')
    if not self.mask_groups:
      raise ValueError('pretrain.mask_groups is empty; give at least one mask group')
    if self.dense_loss and not self.dense_target_layers:
      raise ValueError('pretrain.dense_loss needs at least one dense_target_layers entry')
    start, end = self.dense_ramp_steps
    if not 0 <= start <= end:
      raise ValueError(f'pretrain.dense_ramp_steps={tuple(self.dense_ramp_steps)} must be '
                       '(start, end) with 0 <= start <= end (steps)')


def as_pretrain_config(section: Any) -> PretrainConfig:
  """PretrainConfig from a ConfigDict / dict (unknown keys raise TypeError naming the key)."""
  return config_sections.from_section(PretrainConfig, section)


def predictor_config(cfg: PretrainConfig, vit_config: vit.ViTConfig
                     ) -> masked_predictor_lib.MaskedPredictorConfig:
  """Masked predictor on the encoder's token space: one mask token per group, the encoder's
  position scheme (RoPE stays RoPE; tables become the fixed sincos3d table), and an output of
  `D * len(dense_target_layers)` features for the multi-level dense targets."""
  levels = len(cfg.dense_target_layers) if cfg.dense_loss else 1
  return masked_predictor_lib.MaskedPredictorConfig(
      **dict(cfg.predictor), embed_dim=vit_config.width,
      pos_embed='rope3d' if vit_config.pos_embed == 'rope3d' else 'sincos3d',
      num_mask_tokens=len(cfg.mask_groups), out_dim=vit_config.width * levels)


@dataclasses.dataclass(frozen=True)
class Models:
  """The stage-1 modules and the static facts the step needs."""
  encoder: vit.ViTEncoder
  predictor: masked_predictor_lib.MaskedPredictor
  grid: tuple[int, int, int]
  mask_groups: tuple[masks_lib.MaskGroupSpec, ...]
  mask_counts: tuple[tuple[int, int], ...]
  latent_actions: latent_actions_lib.LatentActionModel | None = None

  @property
  def vit_config(self) -> vit.ViTConfig:
    return self.encoder.config


def build_models(config: Any) -> Models:
  """Modules, token grid and fixed mask counts from the full experiment config."""
  cfg = as_pretrain_config(config.pretrain)
  vit_config = encoder_lib.encoder_config(config.encoder, cfg.num_frames)
  grid = encoder_lib.token_grid(vit_config, cfg.num_frames)
  groups = tuple(masks_lib.MaskGroupSpec(**{
      k: tuple(v) if isinstance(v, list) else v for k, v in dict(g).items()})
                 for g in cfg.mask_groups)
  counts = tuple(masks_lib.mask_token_counts(g, grid, quantile=cfg.mask_count_quantile,
                                             seed=int(config.seed)) for g in groups)
  dtype = training.DTYPES[cfg.dtype]
  predictor = predictor_config(cfg, vit_config)
  latent_actions = (latent_actions_lib.LatentActionModel(
      cfg.latent_action_dim, hidden=predictor.width, out_width=predictor.width, dtype=dtype)
                    if cfg.latent_action_dim else None)
  return Models(encoder=vit.ViTEncoder(vit_config, dtype),
                predictor=masked_predictor_lib.MaskedPredictor(predictor, dtype),
                grid=grid, mask_groups=groups, mask_counts=counts,
                latent_actions=latent_actions)


def ema_momentum(cfg: PretrainConfig, step: jax.Array) -> jax.Array:
  """EMA momentum at `step`: constant, or linear from ema_momentum to ema_momentum_end."""
  if cfg.ema_momentum_end is None:
    return jnp.asarray(cfg.ema_momentum, jnp.float32)
  frac = jnp.minimum(step.astype(jnp.float32) / cfg.num_steps, 1.0)
  return cfg.ema_momentum + frac * (cfg.ema_momentum_end - cfg.ema_momentum)


def init_state(key: jax.Array, models: Models, optimizer: optax.GradientTransformation
               ) -> dict:
  """Fresh train state.

  Returns:
    `{'params': {'encoder', 'predictor'[, 'latent_actions']}, 'target_encoder': copy of the
      encoder params, 'opt_state', 'step': int32 0}`.
  """
  vit_config = models.vit_config
  num_t, side, _ = models.grid
  video = jnp.zeros((1, num_t * vit_config.tubelet_size, vit_config.image_size,
                     vit_config.image_size, vit_config.in_channels), jnp.float32)
  encoder_key, predictor_key, action_key = jax.random.split(key, 3)
  encoder_params = models.encoder.init(encoder_key, video)['params']
  num_context, num_target = models.mask_counts[0]
  predictor_params = models.predictor.init(
      predictor_key, jnp.zeros((1, num_context, vit_config.width), jnp.float32),
      jnp.zeros((1, num_context), jnp.int32), jnp.zeros((1, num_target), jnp.int32),
      models.grid)['params']
  params = {'encoder': encoder_params, 'predictor': predictor_params}
  if models.latent_actions is not None:
    target_width = models.predictor.config.out_dim
    pooled = jnp.zeros((1, num_t, target_width), jnp.float32)
    params['latent_actions'] = models.latent_actions.init(action_key, pooled[:, 0],
                                                          pooled)['params']
  return {'params': params,
          'target_encoder': jax.tree_util.tree_map(jnp.copy, encoder_params),
          'opt_state': optimizer.init(params),
          'step': jnp.zeros((), jnp.int32)}


def preprocess_clips(frames: jax.Array, vit_config: vit.ViTConfig, cfg: PretrainConfig
                     ) -> jax.Array:
  """uint8 `(B, T, S, S, 3)` -> normalised float32 `(B, T, I, I, 3)`, I = encoder image_size."""
  return vit.preprocess_frames(frames, vit_config.image_size, tuple(cfg.pixel_mean),
                               tuple(cfg.pixel_std))


def _online(encoder_params: Any, cfg: PretrainConfig) -> Any:
  """The trained encoder's params as the loss uses them: with `standardise` the batch
  standardisation owns the output scale, so the final LayerNorm's affine stays at its init."""
  return standardise.frozen_output_norm(encoder_params) if cfg.standardise else encoder_params


def dense_weight(cfg: PretrainConfig, step: jax.Array) -> jax.Array:
  """Weight of the dense loss's context term at `step`: 0 before `dense_ramp_steps[0]`,
  linear to `dense_context_weight` at `dense_ramp_steps[1]`, constant after."""
  start, end = cfg.dense_ramp_steps
  ramp = jnp.clip((step.astype(jnp.float32) - start) / max(end - start, 1), 0.0, 1.0)
  return cfg.dense_context_weight * (ramp if end > start else 1.0)


def regulariser_samples(context: jax.Array, context_idx: jax.Array, grid: tuple[int, int, int],
                        group: masks_lib.MaskGroupSpec, samples: str) -> jax.Array:
  """The samples SIGReg sees from one group's context features `(B, K, D)`.

  Returns:
    'tokens': `(1, B * K, D)`, every context token one sample; 'frames': `(F, B, D)`, each
    clip's context tokens mean-pooled per tubelet, for the F tubelets that hold context (the
    first `context_frames` of a predictive group, else all; a tubelet without context tokens
    in a clip pools to 0).
  """
  if samples == 'tokens':
    return context.reshape(1, -1, context.shape[-1])
  num_frames = group.context_frames or grid[0]
  frame_of_token = jax.nn.one_hot(context_idx // (grid[1] * grid[2]), num_frames,
                                  dtype=jnp.float32)  # (B, K, F)
  sums = jnp.einsum('bkf,bkd->fbd', frame_of_token, context.astype(jnp.float32))
  counts = jnp.maximum(frame_of_token.sum(axis=1).T, 1.0)  # (F, B)
  return sums / counts[..., None]


def target_features(models: Models, cfg: PretrainConfig, target_params: Any,
                    video: jax.Array, stop_gradient: bool = True
                    ) -> tuple[jax.Array, jax.Array]:
  """Regression targets of the whole clip and the raw final features (collapse monitor).

  Returns:
    `(targets (B, N, D * levels) float32, normalised per level; raw (B, N, D))`.
  """
  layers = tuple(cfg.dense_target_layers) if cfg.dense_loss else ()
  out = models.encoder.apply({'params': target_params}, video, return_layers=layers)
  final, levels = (out if layers else (out, [out]))
  batch, dim = final.shape[0], final.shape[-1]
  if cfg.standardise and not layers:
    levels = [standardise.batch_normalise(final)[0]]
  targets = jnp.concatenate(
      [losses.normalize_targets(h.reshape(batch, -1, dim)) for h in levels], axis=-1)
  if stop_gradient:
    targets = jax.lax.stop_gradient(targets)
  return targets, jax.lax.stop_gradient(final.reshape(batch, -1, dim))


def jepa_loss(params: Any, target_params: Any, video: jax.Array, group_masks: Sequence[dict],
              models: Models, cfg: PretrainConfig, key: jax.Array | None = None,
              step: jax.Array | None = None) -> tuple[jax.Array, dict]:
  """V-JEPA loss of one batch (see module docstring).

  Args:
    params: `{'encoder', 'predictor'[, 'latent_actions']}` trainable parameters.
    target_params: EMA target encoder parameters (unused with `cfg.target_gradient`).
    video: `(B, T, I, I, 3)` normalised clips.
    group_masks: per group `{'context_idx': (B, Kc_g), 'target_idx': (B, Kt_g)}` int32.
    key: draws SIGReg's directions ('vjepa_sigreg' only).
    step: int32 scalar, the step the dense loss's ramp reads (`dense_loss` only).

  Returns:
    `(loss, aux)` with aux scalars: per-group losses and the collapse monitor
    `target_feature_std`: the std over the batch of each raw target feature (every token
    position and dimension separately), averaged. It measures how much the features depend
    on the clip's content and goes to 0 when the representation collapses (position-only
    features that are the same for every clip count as collapsed).
  """
  targets, raw = target_features(
      models, cfg, _online(params['encoder'], cfg) if cfg.target_gradient else target_params,
      video, stop_gradient=not cfg.target_gradient)
  predictions, context_terms, contexts, aux = [], [], [], {}
  action_embeddings = None
  if models.latent_actions is not None:
    # The inverse model reads the targets without shaping them: the encoder learns only
    # through what its context features let the predictor explain.
    pooled = latent_actions_lib.frame_pooled(jax.lax.stop_gradient(targets), models.grid)
    actions, action_embeddings = models.latent_actions.apply(
        {'params': params['latent_actions']}, pooled[:, 0], pooled)
    aux['latent_action_std'] = actions.astype(jnp.float32).std(axis=0).mean()
  for g, group in enumerate(group_masks):
    context = models.encoder.apply({'params': _online(params['encoder'], cfg)}, video,
                                   token_indices=group['context_idx'])
    if cfg.standardise:
      context = standardise.batch_normalise(context)[0]
    if cfg.objective == 'vjepa_sigreg':
      contexts.append(regulariser_samples(context, group['context_idx'], models.grid,
                                          models.mask_groups[g], cfg.sigreg_samples))
    offsets = (None if action_embeddings is None else latent_actions_lib.frame_offsets(
        action_embeddings, group['target_idx'], models.grid))
    out = models.predictor.apply({'params': params['predictor']}, context,
                                 group['context_idx'], group['target_idx'], models.grid,
                                 mask_index=g, return_context=cfg.dense_loss,
                                 target_offsets=offsets)
    if cfg.dense_loss:
      out, context_pred = out
      context_terms.append(losses.weighted_l1_loss(
          context_pred, losses.gather_tokens(targets, group['context_idx']),
          losses.context_distance_weights(group['context_idx'], group['target_idx'],
                                          models.grid)))
    predictions.append(out)
    aux[f'loss_group{g}'] = losses.l1_loss(
        out, losses.gather_tokens(targets, group['target_idx']))
  loss = losses.masked_prediction_loss(predictions, targets,
                                       [group['target_idx'] for group in group_masks])
  if cfg.dense_loss:
    aux['loss_masked'] = loss
    aux['loss_context'] = jnp.mean(jnp.stack(context_terms))
    aux['dense_weight'] = dense_weight(cfg, step)
    loss = loss + aux['dense_weight'] * aux['loss_context']
  if cfg.objective == 'vjepa_sigreg':
    # Every context token of every group is one sample (over the global batch when sharded).
    aux['loss_jepa'] = loss
    # 'tokens': one sample set across groups; 'frames': one per group (their tubelets differ).
    sample_sets = ([jnp.concatenate(contexts, axis=1)] if cfg.sigreg_samples == 'tokens'
                   else contexts)
    aux['sigreg'] = jnp.mean(jnp.stack([
        sigreg_lib.sigreg(key, samples, cfg.sigreg_directions) for samples in sample_sets]))
    loss = loss + cfg.sigreg_weight * aux['sigreg']
  aux['target_feature_std'] = raw.astype(jnp.float32).std(axis=0).mean()
  return loss, aux


def make_train_step(models: Models, cfg: PretrainConfig, optimizer: optax.GradientTransformation,
                    schedule: optax.Schedule, seed: int = 0
                    ) -> Callable[[dict, dict], tuple[dict, dict]]:
  """Pure `(state, batch) -> (state, metrics)`; batch has 'observations' and 'masks'. The
  step's randomness (SIGReg directions) is `fold_in(PRNGKey(seed), step)`: exact on resume."""
  def train_step(state, batch):
    video = preprocess_clips(batch['observations'], models.vit_config, cfg)
    grad_fn = jax.value_and_grad(jepa_loss, has_aux=True)
    key = jax.random.fold_in(jax.random.PRNGKey(seed), state['step'])
    (loss, aux), grads = grad_fn(state['params'], state['target_encoder'], video,
                                 batch['masks'], models, cfg, key, state['step'])
    updates, opt_state = optimizer.update(grads, state['opt_state'], state['params'])
    params = optax.apply_updates(state['params'], updates)
    momentum = ema_momentum(cfg, state['step'])
    target = training.ema_update(state['target_encoder'], params['encoder'], momentum)
    metrics = {'loss': loss, **aux, 'grad_norm': optax.tree.norm(grads),
               'lr': schedule(state['step']), 'ema_momentum': momentum}
    return ({'params': params, 'target_encoder': target, 'opt_state': opt_state,
             'step': state['step'] + 1}, metrics)
  return train_step


def model_batch(batch: dict) -> dict:
  """The parts of a loader batch the step reads (drops actions / proprio / states)."""
  return {'observations': batch['observations'], 'masks': batch['masks']}


def sharded_setup(config: Any, mesh: jax.sharding.Mesh
                  ) -> tuple[Models, PretrainConfig, dict, Callable[[dict, dict], tuple]]:
  """The models, the initial state laid out on `mesh` and the jitted step, as `train` runs
  them (`training.init_sharded` and `training.jit_step`: parameters, EMA target and optimiser
  moments placed by `config.partition_rules`, batches split over the data axes, the state
  donated, so callers must use the returned state and drop the old one).

  Returns:
    `(models, cfg, state, step_fn)` with `step_fn(state, device_batch) -> (state, metrics)`.
  """
  models, cfg, parts = stage_parts(config)
  state, shardings = training.init_sharded(parts['init_fn'], int(config.seed), mesh,
                                           training.partition_rules(config))
  return models, cfg, state, training.jit_step(parts['step_fn'], shardings, (), mesh)


def stage_parts(config: Any) -> tuple[Models, PretrainConfig, dict]:
  """Models, the section's config and the stage's `init_fn` / `step_fn` (what `train` runs on
  the stage harness, and what `jepa_jax.aot` compiles for TPU topologies)."""
  cfg = as_pretrain_config(config.pretrain)
  models = build_models(config)
  optimizer, schedule = training.make_optimizer(cfg), training.learning_rate_schedule(cfg)
  return models, cfg, dict(
      init_fn=functools.partial(init_state, models=models, optimizer=optimizer),
      step_fn=make_train_step(models, cfg, optimizer, schedule, int(config.seed)))


def make_frame_encoder(models: Models, cfg: PretrainConfig, mesh: jax.sharding.Mesh,
                       vit_config: vit.ViTConfig | None = None
                       ) -> Callable[[Any, np.ndarray], jax.Array]:
  """Jitted `(encoder_params, frames uint8 (B, S, S, 3)) -> (B, 1, H', W', D)` tokens.

  Each frame is a duplicated clip of `tubelet_size` frames (docs/reference.md §1), as in stage 2.
  Params may be sharded on `mesh`; the output is replicated so every host can read it.
  `vit_config`: the exported encoder's (with its output map), default the trained one's.
  """
  vit_config = vit_config or models.vit_config
  encoder = vit.ViTEncoder(vit_config, models.encoder.dtype)

  @functools.partial(jax.jit, out_shardings=sharding_lib.replicated(mesh))
  def encode(params, frames):
    clips = vit.image_to_clip(preprocess_clips(frames, vit_config, cfg), vit_config.tubelet_size)
    return encoder.apply({'params': params}, clips)
  return encode


def run_probe(encode: Callable[[np.ndarray], jax.Array], dataset_path: str,
              cfg: PretrainConfig) -> dict:
  """Ridge probes (flattened patch tokens, mean-pooled tokens) to the dot position.

  Fit on every frame of the first `probe_train_trajectories` train trajectories, scored on
  every frame of the first `probe_val_trajectories` validation trajectories.

  Returns:
    `{'patch': {'error', 'train_error', 'l2'}, 'mean': {...}, 'distance_spearman':
      rank correlation of latent and dot distances on validation frames}`.
  """
  data = {}
  for split, count in (('train', cfg.probe_train_trajectories),
                       ('validation', cfg.probe_val_trajectories)):
    stored = trajectories_lib.load_trajectories(dataset_path, split, max_count=count)
    frames = stored['observations'].reshape((-1,) + stored['observations'].shape[2:])
    positions = stored['states'].reshape(-1, stored['states'].shape[-1])[:, :2]
    data[split] = (probe_lib.frame_features(encode, frames, cfg.probe_batch_size), positions)
  (train_feats, train_pos), (val_feats, val_pos) = data['train'], data['validation']
  results = {kind: probe_lib.fit_position_probe(train_feats[kind], train_pos, val_feats[kind],
                                                val_pos)
             for kind in ('patch', 'mean')}
  results['distance_spearman'] = probe_lib.latent_distance_correlation(val_feats['patch'],
                                                                       val_pos)
  return results


def training_frames(dataset_path: str, cfg: PretrainConfig) -> np.ndarray:
  """uint8 `(N, T, S, S, 3)` frames of the first `probe_train_trajectories` training
  trajectories: what the export's standardisation and slow readout are fit on."""
  return trajectories_lib.load_trajectories(
      dataset_path, 'train', max_count=cfg.probe_train_trajectories)['observations']


def fold_training_statistics(encode: Callable[[Any, np.ndarray], jax.Array], encoder_params: Any,
                             frames: np.ndarray, cfg: PretrainConfig) -> Any:
  """`encoder_params` with the per-channel mean / std of its features over `frames`
  (`training_frames`) folded into its final LayerNorm."""
  frames = frames.reshape((-1,) + frames.shape[2:])
  batches = (frames[i:i + cfg.probe_batch_size]
             for i in range(0, len(frames), cfg.probe_batch_size))
  mean, std = standardise.latent_statistics(functools.partial(encode, encoder_params), batches)
  return standardise.fold_batchnorm(jax.device_get(encoder_params), mean, std)


def fit_slow_readout(encode: Callable[[Any, np.ndarray], jax.Array], encoder_params: Any,
                     frames: np.ndarray, width: int, cfg: PretrainConfig) -> Any:
  """`encoder_params` with the `slow_readout` map (`slow_features.slow_readout`, or
  `appended_readout` in 'append' mode) fit on the consecutive `frames` (`training_frames`;
  every token position its own sequence) as `output_proj`; `width` is the encoder's channel
  count D."""
  count, steps = frames.shape[:2]
  tokens = probe_lib.frame_features(functools.partial(encode, encoder_params),
                                    frames.reshape((-1,) + frames.shape[2:]),
                                    cfg.probe_batch_size)['patch']  # (N * T, tokens * D)
  tokens = tokens.reshape(count, steps, -1, width).transpose(0, 2, 1, 3)
  sequences = tokens.reshape((-1, steps, width))
  kernel, bias = (slow_features.appended_readout(sequences, cfg.slow_readout,
                                                 cfg.slow_readout_weight)
                  if cfg.slow_readout_mode == 'append'
                  else slow_features.slow_readout(sequences, cfg.slow_readout))
  return slow_features.fold_readout(jax.device_get(encoder_params), kernel, bias)


def export_config(models: Models, cfg: PretrainConfig) -> vit.ViTConfig:
  """The exported encoder's config: the trained one's, with the slow readout's output map."""
  if not cfg.slow_readout:
    return models.vit_config
  kept = models.vit_config.width if cfg.slow_readout_mode == 'append' else 0
  return dataclasses.replace(models.vit_config, output_dim=kept + cfg.slow_readout)


def frozen_encoder(models: Models, cfg: PretrainConfig,
                   encode: Callable[[Any, np.ndarray], jax.Array], params: Any,
                   dataset_path: str) -> Any:
  """What stage 2 freezes, from trained (or initial) encoder params: the standardisation
  (`standardise`) and the slow readout (`slow_readout`) fit on the training frames (read once),
  folded in. `encode`: `make_frame_encoder` of the trained config."""
  if not (cfg.standardise or cfg.slow_readout):
    return params
  frames = training_frames(dataset_path, cfg)
  if cfg.standardise:
    params = fold_training_statistics(encode, params, frames, cfg)
  if cfg.slow_readout:
    params = fit_slow_readout(encode, params, frames, models.vit_config.width, cfg)
  return params


def export_encoder(path: str, models: Models, cfg: PretrainConfig, params: Any) -> None:
  """Writes the frozen-encoder export stage 2 reads (kind 'vit' + its pixel normalisation)."""
  checkpoint_lib.save_model(
      path, kind='vit', config=dataclasses.asdict(export_config(models, cfg)), params=params,
      extra={'pixel_mean': np.asarray(cfg.pixel_mean, np.float32),
             'pixel_std': np.asarray(cfg.pixel_std, np.float32)})


def export_random_encoder(config: Any, path: str, data_dir: str) -> None:
  """Exports the random initialisation of stage 1's encoder (the init `train` starts from for
  `config.seed`): the same-architecture baseline of the ablation, standardised and read out
  over the training frames as the trained export is (`frozen_encoder`)."""
  models, cfg, parts = stage_parts(config)
  state = jax.jit(parts['init_fn'])(jax.random.PRNGKey(int(config.seed)))
  mesh = sharding_lib.make_mesh({'data': 1}, devices=jax.devices()[:1])
  params = frozen_encoder(models, cfg, make_frame_encoder(models, cfg, mesh),
                          state['target_encoder'], trajectories_lib.locate_dataset(config, data_dir))
  export_encoder(path, models, cfg, jax.device_get(params))


def train(config: Any, workdir: str, data_dir: str) -> dict:
  """Runs (or resumes) stage 1 and writes its outputs under `workdir`.

  Writes: `checkpoints/` (resumable), TensorBoard events, `encoder/` (EMA target encoder via
  `checkpoint.save_model(kind='vit', extra={'pixel_mean', 'pixel_std'})`) and `summary.json`.

  Returns:
    The summary dict: `objective`; `probe_error` (flattened patch tokens of the trained
    encoder, the env's `distance_unit`, validation frames), `probe_error_random_encoder` (same probe on
    the initial encoder), the mean-pooled variants; `geometry_<measure>` and
    `geometry_<measure>_random_encoder` (pretrain/geometry.py on rendered frames: pooled probe,
    latent-distance Spearman, effective rank, cost-landscape Spearman, latent variance); final
    metrics, steps/s and timings. Also writes `cost_landscape.png`.
  """
  start_time = time.time()
  workdir = os.path.abspath(workdir)
  dataset_path = trajectories_lib.locate_dataset(config, data_dir)
  os.makedirs(workdir, exist_ok=True)
  models, cfg, parts = stage_parts(config)
  logging.info('stage 1: token grid %s, mask counts (context, target) per group %s',
               models.grid, models.mask_counts)
  mask_transform = masks_lib.MultiBlockMaskTransform(models.grid, models.mask_groups,
                                                     models.mask_counts)

  def make_loader(per_host, shard_index, shard_count):
    return pipeline.make_clip_loader(
        dataset_path, 'train', batch_size=per_host, num_frames=cfg.num_frames,
        frameskip=cfg.frameskip, seed=int(config.seed), shard_index=shard_index,
        shard_count=shard_count, extra_transforms=[mask_transform])

  env = envs.get(config.env)
  geometry_options = dict(image_size=int(config.data.image_size),
                          num_fit=cfg.geometry_frames, num_eval=cfg.geometry_frames // 2,
                          seed=int(config.seed))
  # Set once the stage has placed its state: the frame encoder for the mesh, and the
  # random-encoder baseline = this run's initialisation (copied before the first step donates
  # the state; on a resume it is the same deterministic init).
  placed, random_geometry = {}, {}

  def on_init(state, mesh, frozen):
    del frozen
    placed.update(encode=make_frame_encoder(models, cfg, mesh), mesh=mesh,
                  random_params=jax.tree_util.tree_map(jnp.copy, state['target_encoder']))

  def geometry_eval(state, step):
    """TensorBoard `eval/` scalars: geometry of the EMA target and of the random init."""
    del step
    encode = placed['encode']
    if not random_geometry:  # the random-init encoder does not change: measured once
      random_geometry.update(geometry.measure_encoder(
          functools.partial(encode, placed['random_params']), env, **geometry_options))
    trained = geometry.measure_encoder(functools.partial(encode, state['target_encoder']), env,
                                       **geometry_options)
    return {**{k: v for k, v in trained.items() if np.ndim(v) == 0},
            **{f'{k}_random_encoder': v for k, v in random_geometry.items() if np.ndim(v) == 0}}

  stage = training.Stage(
      loop=cfg, **parts, make_loader=make_loader, model_inputs=model_batch,
      settings=('env', 'seed', 'data', 'encoder'),
      eval_fn=geometry_eval if cfg.geometry_every else None,
      eval_every=cfg.geometry_every or None, on_init=on_init)
  result = training.run_stage(stage, config, workdir)
  state, metrics = result.state, result.metrics
  target_params = state['target_encoder']
  training.check_finite_params(target_params, f'the stage-1 encoder at step {cfg.num_steps}')
  # The export outputs what stage 2 freezes (standardised, read out); every measure below is of
  # it, and of the random init prepared the same way.
  target_params, random_params = (
      frozen_encoder(models, cfg, placed['encode'], params, dataset_path)
      for params in (target_params, placed['random_params']))
  # Without an output map the export's config is the trained one: reuse its compiled encoder.
  encode = (make_frame_encoder(models, cfg, placed['mesh'], export_config(models, cfg))
            if cfg.slow_readout else placed['encode'])
  export_encoder(os.path.join(workdir, 'encoder'), models, cfg, target_params)

  probe_start = time.perf_counter()
  measured = geometry.compare_encoders(
      {'trained': functools.partial(encode, target_params),
       'random_encoder': functools.partial(encode, random_params)}, env,
      landscape_path=(os.path.join(workdir, 'cost_landscape.png')
                      if jax.process_index() == 0 else None), **geometry_options)
  writer = training.MetricsWriter(workdir)
  writer.write_scalars(cfg.num_steps, {f'eval/{k}': v for k, v in measured.items()})
  writer.close()
  trained = run_probe(functools.partial(encode, target_params), dataset_path, cfg)
  random = run_probe(functools.partial(encode, random_params), dataset_path, cfg)
  summary = {
      'objective': cfg.objective,
      # Geometry on rendered frames (geometry.py): 'geometry_<measure>[_random_encoder]'.
      **{f'geometry_{k}': v for k, v in measured.items()},
      'probe_error': trained['patch']['error'],
      'probe_error_random_encoder': random['patch']['error'],
      'probe_error_mean_pool': trained['mean']['error'],
      'probe_error_mean_pool_random_encoder': random['mean']['error'],
      'latent_distance_spearman': trained['distance_spearman'],
      'latent_distance_spearman_random_encoder': random['distance_spearman'],
      'probe_train_error': trained['patch']['train_error'],
      'probe_l2': trained['patch']['l2'],
      'final_metrics': metrics,
      'num_steps': int(jax.device_get(state['step'])),
      'steps_per_sec': result.loop.steps_per_sec,
      'train_seconds': result.loop.seconds,
      'distance_unit': env.distance_unit,
      'probe_seconds': time.perf_counter() - probe_start,
      'total_seconds': time.time() - start_time,
      'token_grid': list(models.grid),
      'mask_counts': [list(c) for c in models.mask_counts],
      'encoder_path': os.path.join(workdir, 'encoder'),
      'dataset_path': dataset_path,
  }
  outputs.write_json(os.path.join(workdir, 'summary.json'), summary)
  logging.info('stage 1 done: probe error %.2f px (random encoder %.2f px)',
               summary['probe_error'], summary['probe_error_random_encoder'])
  return summary
