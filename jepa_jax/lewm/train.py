"""LeWorldModel: encoder and action-conditioned predictor trained jointly from pixels (docs/reference.md §9).

The alternative to stages 1 + 2. One loss trains everything end to end, with no EMA target and
no stop-gradient on the latents:

  z = standardise(encoder(frames))             (B, T, h, w, D), gradients flow into the encoder
  L = MSE(predictor(z[:, :-1], a[:, :-1]), z[:, 1:]) + sigreg_weight * SIGReg(z)

`standardise` is LeWM's BatchNorm projector without affine (per channel over the global batch,
`standardise.batch_normalise`); it makes "every frame has the same latent" impossible, and SIGReg
(pretrain/sigreg.py, over the global batch) keeps the channels from copying each other. At
export the training set's channel mean / std are folded into the encoder's final LayerNorm
(`standardise.fold_batchnorm`), so the exported plain ViT outputs the standardised latent. With the
default `encoder.patch_size == encoder.image_size` the latent is one global token per frame
(`(B, T, 1, 1, D)`): the whole frame is embedded at once, so the latent of the dot is a smooth
function of its position everywhere (a per-patch latent of a small blob is flat once the blob
leaves the patch). The optional proprio channel is trained as in stage 2 (its targets are the
proprio embeddings, stop-gradient) and is off (`proprio_emb_dim=0`) for pixels-only planning.

The result is exported with `world_model.model.save_world_model`, so stage 3 loads it with
`load_world_model` exactly like a stage-2 model. `train(config, workdir, data_dir)` writes
`checkpoints/`, TensorBoard events, `model/`, `summary.json` (rollout error against the
constant baseline, geometry of the trained and the random-init encoder) and
`cost_landscape.png`.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import optax

from jepa_jax import config_sections
from jepa_jax import envs
from jepa_jax import outputs
from jepa_jax import sharding as sharding_lib
from jepa_jax import training
from jepa_jax.data import pipeline
from jepa_jax.data import stats as stats_lib
from jepa_jax.data import trajectories
from jepa_jax.models import vit
from jepa_jax.representation import encoder as encoder_lib
from jepa_jax.representation import geometry
from jepa_jax.representation import sigreg as sigreg_lib
from jepa_jax.representation import standardise
from jepa_jax.world_model import config as wm_config
from jepa_jax.world_model import model as model_lib
from jepa_jax.world_model import pseudo_labels
from jepa_jax.world_model import validate


@dataclasses.dataclass(frozen=True, kw_only=True)
class LeWMConfig(wm_config.PredictorTrainingConfig):
  """The `lewm` section of the experiment config.

  Loop, optimiser, compute dtype and checkpointing: `TrainLoopConfig`. Predictor (LeWM uses an
  AdaLN-zero predictor), proprio channel (proprio_emb_dim 0 = pixels only) and the held-out
  open-loop rollout check: `PredictorTrainingConfig`, as in the `world_model` section.
  encoder: `vit.vit_config` preset + overrides for single frames (tubelet 1); the default
    patch = image size gives one global token per frame, and `readout='cls'` (with
    use_cls_token) LeWorldModel's own latent: the CLS token of a ViT over smaller patches.
  sigreg_weight: lambda of SIGReg (LeWM: 0.1). Measured on Wall (1000 steps, 20 episodes,
    pixels only): 0.1 -> 25 % success, 0.01 -> 55 %, 0.002 -> 75 %: a strong pull to an
    isotropic 64-D Gaussian folds the 2-D state manifold, so far-apart frames look equally far
    (latent-distance Spearman 0.36 / 0.75 / 0.93); the batch standardisation already rules out
    collapse, SIGReg only has to stop the channels from becoming copies of each other.
  sigreg_directions: random projections per step.
  statistics_batches: training batches whose latent mean / std are folded into the export.
  geometry_frames: rendered frames of the geometry measures (pretrain/geometry.py).
  train_encoder: False holds the encoder at its random initialisation (only the predictor and
    the proprio channel learn; the batch standardisation still applies): the same-architecture
    random-encoder baseline of `run_pipeline --ablation`.
  """
  SECTION = 'lewm'
  batch_size: int = 32
  num_steps: int = 1000
  predictor: str = 'adaln_zero'
  predictor_config: dict = dataclasses.field(default_factory=lambda: dict(
      depth=3, num_heads=4, mlp_ratio=4.0))
  proprio_emb_dim: int = 0
  eval_batch_size: int = 32
  encoder: dict = dataclasses.field(default_factory=lambda: dict(
      preset='tiny', image_size=64, patch_size=64, tubelet_size=1, width=64, depth=2,
      num_heads=4, pos_embed='none'))
  sigreg_weight: float = 0.002
  sigreg_directions: int = 256
  statistics_batches: int = 16
  geometry_frames: int = 2000
  train_encoder: bool = True

  def __post_init__(self):
    super().__post_init__()
    config_sections.check_keys(self.encoder, encoder_lib.ENCODER_KEYS, 'lewm.encoder')
    config_sections.require_positive(self, 'lewm', (
        'sigreg_directions', 'statistics_batches', 'geometry_frames'))
    if self.sigreg_weight < 0:
      raise ValueError(f'lewm.sigreg_weight must be >= 0, got {self.sigreg_weight}')
    if self.pseudo_labels and not self.proprio_emb_dim:
      # No frozen latent exists before LeWM trains: only proprio shows the actions.
      raise ValueError('lewm.pseudo_labels needs proprio (lewm.proprio_emb_dim > 0): LeWM has no '
                       'frozen encoder to read actions from before it trains; set '
                       'lewm.pseudo_labels=False')


def as_lewm_config(section: Any) -> LeWMConfig:
  """LeWMConfig from a ConfigDict / dict / None (defaults); unknown keys raise TypeError."""
  return config_sections.from_section(LeWMConfig, section)


def build_model(cfg: LeWMConfig, stats: dict, frameskip: int) -> model_lib.WorldModel:
  """The WorldModel (trainable encoder inside) that training optimises and stage 3 loads."""
  dtype = training.DTYPES[cfg.dtype]
  encoder = vit.ViTEncoder(encoder_lib.encoder_config(cfg.encoder, num_frames=1), dtype)
  if encoder.config.tubelet_size != 1:
    raise ValueError(f'lewm.encoder.tubelet_size must be 1 (frames are encoded one by one), '
                     f'got {encoder.config.tubelet_size}')
  return model_lib.build_world_model(
      encoder=encoder, pixel_mean=vit.IMAGENET_MEAN, pixel_std=vit.IMAGENET_STD,
      predictor_kind=cfg.predictor, predictor_config=cfg.predictor_config,
      proprio_emb_dim=cfg.proprio_emb_dim, stats=stats, frameskip=frameskip, dtype=dtype)


def encode_with_grad(model: model_lib.WorldModel, encoder_params, frames: jax.Array
                     ) -> jax.Array:
  """uint8 frames `(B, T, S, S, 3)` -> latents `(B, T, h, w, D)`, differentiable.

  The same computation as `WorldModel.encode` (which stops gradients: its encoder is frozen).
  """
  b, t = frames.shape[:2]
  images = vit.preprocess_frames(frames.reshape((b * t,) + frames.shape[2:]), model.image_size,
                                 model.pixel_mean, model.pixel_std)
  tokens = model.encoder.apply({'params': encoder_params}, images[:, None])
  return tokens.reshape((b, t) + tokens.shape[2:])


def init_params(model: model_lib.WorldModel, key: jax.Array, num_frames: int) -> dict:
  """`{'encoder', 'predictor'[, 'proprio_encoder']}` at initialisation."""
  encoder_key, rest_key = jax.random.split(key)
  size = model.image_size
  encoder_params = model.encoder.init(encoder_key, jnp.zeros((1, 1, size, size, 3)))['params']
  return {'encoder': encoder_params,
          **model_lib.init_trainable_params(model, rest_key, num_frames - 1)}


def lewm_loss(params: dict, batch: dict, key: jax.Array, model: model_lib.WorldModel,
              cfg: LeWMConfig) -> tuple[jax.Array, dict]:
  """`MSE(pred, z_next) + lambda * SIGReg(z) [+ proprio_weight * MSE(pe_pred, sg(pe_next))]`
  on batch-standardised latents z (`standardise.batch_normalise`), gradients through both sides.

  Args:
    batch: 'observations' uint8 `(B, T, S, S, 3)`, 'actions' `(B, T, A)` and 'proprio'
      `(B, T, P)` z-scored.
  Returns:
    `(loss, metrics)`: loss terms and 'raw_latent_std' (mean per-channel std of the latents
    before standardisation, the collapse monitor).
  """
  encoder_params = (params['encoder'] if cfg.train_encoder
                    else jax.lax.stop_gradient(params['encoder']))
  raw = encode_with_grad(model, standardise.frozen_output_norm(encoder_params), batch['observations'])
  z, _, std = standardise.batch_normalise(raw)
  pe = model.embed_proprio(params, batch['proprio'])
  pred_z, pred_pe = model.predict(params, z[:, :-1], batch['actions'][:, :-1],
                                  None if pe is None else pe[:, :-1])
  prediction = jnp.mean(jnp.square(pred_z.astype(jnp.float32) - z[:, 1:]))
  # SIGReg over (T, B * h * w, D): every token of every frame is one sample.
  tokens = jnp.moveaxis(z, 1, 0).reshape(z.shape[1], -1, z.shape[-1])
  regulariser = sigreg_lib.sigreg(key, tokens, cfg.sigreg_directions)
  loss = prediction + cfg.sigreg_weight * regulariser
  metrics = {'prediction': prediction, 'sigreg': regulariser, 'raw_latent_std': jnp.mean(std)}
  if pe is not None:
    target = model_lib.broadcast_proprio(jax.lax.stop_gradient(pe[:, 1:]), pred_pe)
    proprio = jnp.mean(jnp.square(pred_pe - target))
    loss = loss + cfg.proprio_weight * proprio
    metrics['proprio'] = proprio
  metrics['loss'] = loss
  return loss, metrics


def make_train_step(model: model_lib.WorldModel, cfg: LeWMConfig, tx, seed: int):
  """Pure `(state, batch) -> (state, metrics)`; SIGReg's directions are drawn from
  `fold_in(PRNGKey(seed), step)`, so a resumed run draws what an uninterrupted one does. With
  `cfg.train_encoder=False` the encoder params are carried over unchanged."""
  def train_step(state, batch):
    key = jax.random.fold_in(jax.random.PRNGKey(seed), state['step'])
    (_, metrics), grads = jax.value_and_grad(lewm_loss, has_aux=True)(
        state['params'], batch, key, model, cfg)
    updates, opt_state = tx.update(grads, state['opt_state'], state['params'])
    params = optax.apply_updates(state['params'], updates)
    if not cfg.train_encoder:  # neither gradients nor weight decay move the random encoder
      params = {**params, 'encoder': state['params']['encoder']}
    return ({'params': params, 'opt_state': opt_state, 'step': state['step'] + 1},
            {**metrics, 'grad_norm': optax.tree.norm(grads)})
  return train_step


def stage_parts(config: Any, model: model_lib.WorldModel) -> dict:
  """LeWM's `init_fn` (key -> state) and `step_fn` ((state, batch) -> (state, metrics)) for
  `model`: what `train` runs on the stage harness and `jepa_jax.aot` compiles for TPU
  topologies."""
  cfg = as_lewm_config(config.get('lewm'))
  data_cfg = trajectories.as_data_config(config.data)
  tx = training.make_optimizer(cfg)

  def init_fn(key):
    params = init_params(model, key, data_cfg.num_hist + data_cfg.num_pred)
    return {'params': params, 'opt_state': tx.init(params), 'step': jnp.zeros((), jnp.int32)}
  return dict(init_fn=init_fn, step_fn=make_train_step(model, cfg, tx, int(config.seed)))


def _model_inputs(batch: dict) -> dict:
  # No positions, states or rewards reach the model: proprio only feeds its own channel.
  return {k: batch[k] for k in ('observations', 'actions', 'proprio')}


def train(config: Any, workdir: str, data_dir: str) -> dict:
  """Trains (or resumes) LeWM, validates, measures the geometry, exports `<workdir>/model`.

  Args:
    config: the full experiment ConfigDict (sections env, seed, data, lewm (optional:
      defaults), mesh, partition_rules).
    workdir: checkpoints, TensorBoard events, summary.json, cost_landscape.png, model/.
    data_dir: TFDS data_dir holding the dataset of `config.data`.
  Returns:
    The summary dict (also `summary.json`).
  """
  start_time = time.time()
  cfg = as_lewm_config(config.get('lewm'))
  data_cfg = trajectories.as_data_config(config.data)
  num_frames = data_cfg.num_hist + data_cfg.num_pred
  dataset_dir = trajectories.locate_dataset(config, data_dir)
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  model = build_model(cfg, stats_lib.load_stats(dataset_dir), data_cfg.frameskip)
  num_hosts = jax.process_count()
  num_labelled, relabelled, pseudo_report = pseudo_labels.training_labels(
      config, cfg, dataset_dir, use_proprio=model.use_proprio)

  def make_loader(per_host, shard_index, shard_count):
    return pipeline.make_clip_loader(
        dataset_dir, 'train', batch_size=per_host, num_frames=num_frames,
        frameskip=data_cfg.frameskip, seed=int(config.seed), shard_index=shard_index,
        shard_count=shard_count, num_trajectories=num_labelled,
        relabelled_actions=relabelled)

  kept = {}

  def on_init(state, mesh, frozen):
    del frozen
    kept.update(mesh=mesh, random_encoder=jax.device_get(state['params']['encoder']))

  stage = training.Stage(
      loop=cfg, **stage_parts(config, model), make_loader=make_loader,
      model_inputs=_model_inputs, on_init=on_init)
  result = training.run_stage(stage, config, workdir)
  mesh = kept['mesh']

  params = jax.device_get(result.state['params'])
  training.check_finite_params(params, f'the LeWM model at step {result.loop.step}')
  statistics_loader = make_loader(cfg.batch_size // num_hosts, jax.process_index(), num_hosts)
  encode = jax.jit(lambda p, frames: encode_with_grad(model, p, frames))
  mean, std = standardise.latent_statistics(
      functools.partial(encode, params['encoder']),
      (batch['observations'] for _, batch in zip(range(cfg.statistics_batches),
                                                 statistics_loader)))
  params = {**params, 'encoder': standardise.fold_batchnorm(params['encoder'], mean, std)}
  rollout_fn = validate.make_rollout_error_fn(model, cfg.eval_horizon)
  batches = validate.validation_batches(
      dataset_dir, horizon=cfg.eval_horizon, batch_size=cfg.eval_batch_size // num_hosts,
      num_batches=cfg.eval_num_batches, frameskip=data_cfg.frameskip, seed=int(config.seed),
      shard_index=jax.process_index(), shard_count=num_hosts)
  rollout = validate.evaluate(
      rollout_fn, params, (sharding_lib.shard_batch(_model_inputs(b), mesh) for b in batches))
  logging.info('LeWM open-loop rollout error:\n%s', validate.format_table(rollout))
  if jax.process_index() == 0:
    model_lib.save_world_model(os.path.join(workdir, 'model'), model, params)

  env = envs.get(config.env)
  encode = jax.jit(lambda p, frames: model.encode({'encoder': p}, frames[:, None])[:, 0])
  measured = geometry.compare_encoders(
      {'trained': functools.partial(encode, params['encoder']),
       'random_encoder': functools.partial(encode, kept['random_encoder'])},
      env, image_size=data_cfg.image_size, num_fit=cfg.geometry_frames,
      num_eval=cfg.geometry_frames // 2, seed=int(config.seed),
      landscape_path=(os.path.join(workdir, 'cost_landscape.png')
                      if jax.process_index() == 0 else None))
  summary = {
      'objective': 'lewm',
      'distance_unit': env.distance_unit,
      **validate.summary_entries(rollout),
      # Same keys as stage 1's summary: 'geometry_<measure>[_random_encoder]'.
      **{f'geometry_{k}': v for k, v in measured.items()},
      'final_metrics': result.metrics,
      'num_steps': int(jax.device_get(result.state['step'])),
      'train_seconds': result.loop.seconds,
      'steps_per_sec': result.loop.steps_per_sec,
      'total_seconds': time.time() - start_time,
      'latent_grid': list(model.encoder.config.grid),
      'labeled_trajectories': num_labelled,
      **({'pseudo_labels': pseudo_report} if pseudo_report else {}),
      'model_path': os.path.join(workdir, 'model'),
  }
  outputs.write_json(os.path.join(workdir, 'summary.json'), summary)
  return summary
