"""Stage-2 training: an action-conditioned predictor on top of a frozen encoder (docs/reference.md §4).

`train(config, workdir, data_dir, encoder_path)` restores the frozen encoder export, builds the
predictor chosen by `config.world_model`, trains it with the teacher-forcing + "2roll" objective
on the stage harness (`training.run_stage`: sharded, donated step, exact resume, NaN stop),
validates open-loop rollouts against the constant-latent baseline, writes `summary.json` and
exports the model to `<workdir>/model` for stage 3.

Workdir layout: `checkpoints/` (training checkpoints), TensorBoard event files, `summary.json`,
`model/` (save_model kind 'world_model').
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any

import jax
import jax.numpy as jnp
import optax
from absl import logging

from jepa_jax import config_sections
from jepa_jax import outputs
from jepa_jax import sharding
from jepa_jax import training
from jepa_jax.data import pipeline
from jepa_jax.data import stats as stats_lib
from jepa_jax.data import trajectories
from jepa_jax.world_model import config as wm_config
from jepa_jax.world_model import losses
from jepa_jax.world_model import model as model_lib
from jepa_jax.world_model import pseudo_labels
from jepa_jax.world_model import validate


@dataclasses.dataclass(frozen=True, kw_only=True)
class WorldModelConfig(wm_config.PredictorTrainingConfig):
  """The `world_model` section of an experiment config; defaults are the paper's (docs/reference.md §4).

  Loop, optimiser (AdamW, no decay on biases/norms; the decay follows a cosine from
  weight_decay_start to weight_decay), compute dtype and checkpointing: `TrainLoopConfig`.
  Predictor, proprio channel and validation: `PredictorTrainingConfig`.
  residual: predict the change of the latent (z_next = z + out) instead of the latent itself
    (False = the reference; see model.WorldModel).
  l2_weight, l1_weight, cosine_weight, proprio_weight, rollout_steps: see losses.LossConfig.
  eval_every: validation every this many steps (0: only at the end).
  """
  SECTION = 'world_model'
  batch_size: int = 128
  num_steps: int = 50_000
  lr: float = 5e-4
  weight_decay_start: float | None = 1e-7
  dtype: str = 'bfloat16'
  checkpoint_every: int = 2000
  max_to_keep: int = 3
  residual: bool = False
  l2_weight: float = 1.0
  l1_weight: float = 0.0
  cosine_weight: float = 0.0
  rollout_steps: int = 2
  eval_every: int = 0

  def __post_init__(self):
    super().__post_init__()
    if self.eval_every < 0:
      raise ValueError(f'world_model.eval_every must be >= 0 (0: only at the end), got '
                       f'{self.eval_every}')

  def loss_config(self, rollout_context: int) -> losses.LossConfig:
    return losses.LossConfig(
        l2_weight=self.l2_weight, l1_weight=self.l1_weight, cosine_weight=self.cosine_weight,
        proprio_weight=self.proprio_weight, rollout_steps=self.rollout_steps,
        rollout_context=rollout_context)


def init_state(model: model_lib.WorldModel, tx, key, num_frames: int) -> dict:
  """Train state {'params' (trainable only: predictor [+ proprio_encoder]), 'opt_state',
  'step' int32}. The frozen encoder is not part of it (never optimised nor checkpointed)."""
  # The predictor never sees more than T - 1 frames (see losses.teacher_forcing_loss).
  params = model_lib.init_trainable_params(model, key, num_frames - 1)
  return {'params': params, 'opt_state': tx.init(params), 'step': jnp.zeros((), jnp.int32)}


def make_train_step(model: model_lib.WorldModel, tx, loss_config: losses.LossConfig, seed: int,
                    use_dropout: bool = False):
  """Pure `(state, encoder_params, batch) -> (state, metrics)` (jit it with shardings).

  batch: {'observations' uint8 (B, T, S, S, 3), 'actions' f32 (B, T, A) z-scored,
  'proprio' f32 (B, T, P) z-scored}. Frames are encoded once per step, under stop_gradient.
  The step's randomness (rollout prefix, dropout) is `fold_in(PRNGKey(seed), step)`, so a
  resumed run draws exactly what an uninterrupted one does.
  """

  def train_step(state, encoder_params, batch):
    z = model.encode({'encoder': encoder_params}, batch['observations'])
    key = jax.random.fold_in(jax.random.PRNGKey(seed), state['step'])

    def loss_fn(params):
      pe = model.embed_proprio(params, batch['proprio'])
      def predict(z, a, pe, rng):
        return model.predict(params, z, a, pe, dropout_rng=rng if use_dropout else None)
      return losses.world_model_loss(predict, z, batch['actions'], pe, key, loss_config)

    (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state['params'])
    updates, opt_state = tx.update(grads, state['opt_state'], state['params'])
    params = optax.apply_updates(state['params'], updates)
    metrics = {**metrics, 'grad_norm': optax.tree.norm(grads)}
    return {'params': params, 'opt_state': opt_state, 'step': state['step'] + 1}, metrics

  return train_step


MODEL_INPUTS = ('observations', 'actions', 'proprio')


def _model_inputs(batch):
  return {k: batch[k] for k in MODEL_INPUTS}


def as_world_model_config(section: Any) -> WorldModelConfig:
  """WorldModelConfig from a ConfigDict / dict (unknown keys raise TypeError naming the key)."""
  return config_sections.from_section(WorldModelConfig, section)


def build_model(config, dataset_dir: str, encoder_path: str) -> tuple[Any, Any]:
  """(WorldModel, frozen encoder params) from the config, the dataset stats and the encoder."""
  dtype = training.DTYPES[as_world_model_config(config.world_model).dtype]
  encoder, encoder_params, pixel_mean, pixel_std = model_lib.load_encoder(encoder_path, dtype)
  model = assemble_model(config, encoder, pixel_mean, pixel_std,
                         stats_lib.load_stats(dataset_dir), dtype)
  return model, encoder_params


def assemble_model(config, encoder, pixel_mean, pixel_std, stats: dict,
                   dtype) -> model_lib.WorldModel:
  """The `world_model` section's WorldModel around a frozen `encoder` (a ViTEncoder) for data
  normalised by `stats`, computing in `dtype`: `build_model` gives it an export and a dataset,
  `jepa_jax.aot` stand-ins of their shapes."""
  cfg = as_world_model_config(config.world_model)
  return model_lib.build_world_model(
      encoder=encoder, pixel_mean=pixel_mean, pixel_std=pixel_std, predictor_kind=cfg.predictor,
      predictor_config=cfg.predictor_config, proprio_emb_dim=cfg.proprio_emb_dim, stats=stats,
      frameskip=config.data.frameskip, residual=cfg.residual, dtype=dtype)


def stage_parts(config, model: model_lib.WorldModel) -> dict:
  """Stage 2's `init_fn` (key -> state) and `step_fn` ((state, encoder_params, batch) ->
  (state, metrics)) for `model`: what `train` runs on the stage harness and `jepa_jax.aot`
  compiles for TPU topologies."""
  cfg = as_world_model_config(config.world_model)
  data_cfg = trajectories.as_data_config(config.data)
  tx = training.make_optimizer(cfg)
  return dict(
      init_fn=functools.partial(init_state, model, tx,
                                num_frames=data_cfg.num_hist + data_cfg.num_pred),
      step_fn=make_train_step(model, tx, cfg.loss_config(rollout_context=data_cfg.num_hist),
                              config.seed, use_dropout=cfg.predictor == 'dino_wm'))


def train(config, workdir: str, data_dir: str, encoder_path: str) -> dict:
  """Trains (or resumes) stage 2, validates, exports; returns the summary dict.

  Args:
    config: the full experiment ConfigDict (sections env, seed, data, world_model, mesh,
      partition_rules).
    workdir: stage-2 working directory (checkpoints, TensorBoard, summary.json, model/).
    data_dir: TFDS data_dir holding the dataset generated for `config.env` / `config.data`.
    encoder_path: save_model export (kind 'vit') of the frozen encoder.
  """
  cfg = as_world_model_config(config.world_model)
  data_cfg = trajectories.as_data_config(config.data)
  num_frames = data_cfg.num_hist + data_cfg.num_pred
  dataset_dir = trajectories.dataset_dir(data_dir, config.env, config.data, config.seed)
  trajectories.open_builder(dataset_dir)  # a clear error before any work if it is missing
  os.makedirs(workdir, exist_ok=True)

  model, encoder_params = build_model(config, dataset_dir, encoder_path)
  num_labelled, relabelled, pseudo_report = pseudo_labels.training_labels(
      config, cfg, dataset_dir, use_proprio=model.use_proprio,
      encode=jax.jit(lambda frames: model.encode({'encoder': encoder_params}, frames[:, None])))
  rollout_fn = validate.make_rollout_error_fn(model, cfg.eval_horizon)
  last_eval = {}
  placed = {}  # the frozen encoder params as placed on the mesh (set once the stage starts)

  def make_loader(per_host, shard_index, shard_count):
    return pipeline.make_clip_loader(
        dataset_dir, 'train', batch_size=per_host, num_frames=num_frames,
        frameskip=data_cfg.frameskip, seed=config.seed, shard_index=shard_index,
        shard_count=shard_count, num_trajectories=num_labelled,
        relabelled_actions=relabelled)

  def eval_fn(state, step):
    mesh, shard_count = placed['mesh'], jax.process_count()
    with_encoder = {**state['params'], 'encoder': placed['encoder']}
    batches = validate.validation_batches(
        dataset_dir, horizon=cfg.eval_horizon, batch_size=cfg.eval_batch_size // shard_count,
        num_batches=cfg.eval_num_batches, frameskip=data_cfg.frameskip, seed=config.seed,
        shard_index=jax.process_index(), shard_count=shard_count)
    inputs = (sharding.shard_batch(_model_inputs(b), mesh) for b in batches)
    result = validate.evaluate(rollout_fn, with_encoder, inputs)
    last_eval.update(step=step, result=result)
    logging.info('open-loop rollout error at step %d:\n%s', step, validate.format_table(result))
    return validate.scalars(result)

  def on_init(state, mesh, frozen):
    del state
    placed.update(mesh=mesh, encoder=frozen[0])

  stage = training.Stage(
      loop=cfg, **stage_parts(config, model), make_loader=make_loader,
      frozen=(encoder_params,), model_inputs=_model_inputs,
      settings=('env', 'seed', 'data'),
      eval_fn=eval_fn, eval_every=cfg.eval_every or cfg.num_steps, on_init=on_init)
  result = training.run_stage(stage, config, workdir)
  state = result.state
  step = int(jax.device_get(state['step']))
  if last_eval.get('step') != step:  # e.g. a finished run restarted: validate once more
    writer = training.MetricsWriter(workdir)
    writer.write_scalars(step, {f'eval/{k}': v for k, v in eval_fn(state, step).items()})
    writer.close()

  model_dir = os.path.join(workdir, 'model')
  trained = jax.device_get({**state['params'], 'encoder': encoder_params})
  training.check_finite_params(state['params'], f'the stage-2 world model at step {step}')
  if jax.process_index() == 0:
    model_lib.save_world_model(model_dir, model, trained)
  summary = {
      'num_steps': step,
      'train_seconds': result.loop.seconds,
      'steps_per_sec': result.loop.steps_per_sec,
      'final_train_metrics': result.metrics,
      'eval_horizon': cfg.eval_horizon,
      **validate.summary_entries(last_eval['result']),
      'labeled_trajectories': num_labelled,
      **({'pseudo_labels': pseudo_report} if pseudo_report else {}),
      'model_path': model_dir,
  }
  outputs.write_json(os.path.join(workdir, 'summary.json'), summary)
  return summary
