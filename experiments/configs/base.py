"""The shared base of every experiment config: each setting is declared once.

The defaults of every section are the paper's values, read from the dataclass that owns the
section (`DataConfig`, `PretrainConfig`, `WorldModelConfig`, `PlanningConfig`); an environment's
config file (`wall.py`, `point_maze.py`, `push_t.py`) sets only what its variants change, with
`cpu_variant` holding what the CPU variants of every environment share. Variants:

  smoke        a few minutes on 2 CPU cores (CI): the pipeline runs end to end.
  tiny         the CPU default (2 cores).
  paper        the paper's models, for accelerators: a frozen DINOv2-S/14 encoder (converted
               with `experiments.convert_checkpoint --kind=dinov2`, given as
               `--config.encoder_export=DIR`), the depth-6 AdaLN predictor, CEM 300 x 30.
  paper_vjepa  paper scale with a ViT-S/16 encoder trained by V-JEPA on the environment's data
               (not the paper's encoder).
  paper_vitg   paper_vjepa with V-JEPA 2's ViT-g/16 (1 B parameters, 16 frames of 256 px),
               parameters and optimiser state sharded over every chip (FSDP): a pod's job
               (`--config.encoder.preset=vjepa2_large` for ViT-L/16; check the slice first
               with `experiments.compile_check`).
"""

import dataclasses

import typing
from typing import Any

import ml_collections
from ml_collections import config_dict

from jepa_jax.data import trajectories
from jepa_jax.lewm.train import LeWMConfig
from jepa_jax.planning.config import PlanningConfig
from jepa_jax.pretrain.train import PretrainConfig
from jepa_jax.world_model.train import WorldModelConfig

VARIANTS = ('smoke', 'tiny', 'paper', 'paper_vjepa', 'paper_vitg')


def _section(dataclass_instance) -> ml_collections.ConfigDict:
  """A config section holding every field of a config dataclass, at its default (sequences as
  tuples, which a `--config.<section>.<key>='(...)'` flag can override; a nested dict or
  dataclass field, such as `planning.cem`, as a nested section: `--config.planning.cem.<key>`)."""
  values = dataclasses.asdict(dataclass_instance)
  types = typing.get_type_hints(type(dataclass_instance))  # resolves string annotations
  return ml_collections.ConfigDict(
      {k: tuple(v) if isinstance(v, list) else _unset(types[k]) if v is None else v
       for k, v in values.items()})


def _unset(annotation) -> Any:
  """A field whose default is None (unset) as a typed placeholder, so a flag can set it: a
  ConfigDict cannot infer a type from None. `float | None` -> float, `int | None` -> int;
  anything else (a scalar-or-sequence bound) takes a literal (`--config.x='(0.5, 1.0)'`)."""
  for kind in (int, float):
    if annotation in (kind | None, typing.Optional[kind]):
      return config_dict.placeholder(kind)
  return config_dict.placeholder(object)


def get_config(env: str, variant: str) -> ml_collections.ConfigDict:
  """Paper-scale config of `env` (every section at its dataclass defaults)."""
  if variant not in VARIANTS:
    raise ValueError(f'unknown config variant {variant!r}; choose one of {VARIANTS}')
  config = ml_collections.ConfigDict()
  config.env = env
  config.variant = variant
  config.seed = 0
  # 'three_stage': V-JEPA encoder on frames (stage 1) -> world model on it, frozen (stage 2) ->
  # planning; 'lewm': LeWorldModel, encoder and predictor end to end -> planning.
  config.method = 'three_stage'
  # Stage 1 trains the encoder ('pretrain') or a converted export is used frozen ('export').
  config.encoder_source = 'export' if variant == 'paper' else 'pretrain'
  config.encoder_export = ''
  config.data = _section(trajectories.DataConfig())
  # The fraction of training trajectories with action labels: stage 1 reads every trajectory's
  # frames, stage 2 and LeWM the labelled ones only (data.pipeline.labeled_trajectories).
  config.labeled_fraction = 1.0
  config.encoder = ml_collections.ConfigDict(dict(
      preset='small', image_size=224, patch_size=16, tubelet_size=2, pos_embed='rope3d'))
  # The paper's V-JEPA 2 style stage 1 (used by `paper_vjepa`).
  config.pretrain = _section(PretrainConfig(
      batch_size=256, num_steps=100_000, num_frames=16, lr=6e-4, warmup_steps=10_000,
      predictor=dict(width=384, depth=12, num_heads=12), dtype='bfloat16', log_every=100,
      checkpoint_every=5000, probe_train_trajectories=200, probe_val_trajectories=100))
  config.world_model = _section(WorldModelConfig())
  # LeWorldModel (method='lewm'): encoder and predictor trained together.
  config.lewm = _section(LeWMConfig())
  config.planning = _section(PlanningConfig())
  # More rows of stage 3 on the same model and episodes: name -> overrides of `planning`
  # (a nested dict, e.g. `cem=dict(num_samples=300)`, overrides only the keys it names).
  # 'pixels_only' scores the visual latents alone (the model still reads proprio as an input;
  # `run_pipeline --ablation` adds models trained without it).
  config.planning_extra = ml_collections.ConfigDict(dict(
      pixels_only=dict(objective=dict(proprio_weight=0.0))))
  # The protocol of `run_pipeline --ablation`'s rows: 'main' or a row of `planning_extra`.
  config.ablation_protocol = 'main'

  # Sharding is data: mesh axis sizes (-1 = all remaining devices) and partition rules
  # (regex on the '/'-joined parameter path -> PartitionSpec entries per array dimension).
  config.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1))
  config.partition_rules = [
      ('.*/kernel', ('fsdp', None)),
      ('.*', ()),
  ]
  return config


def cpu_variant(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The settings every environment's `smoke` and `tiny` variants share (2 CPU cores)."""
  smoke = config.variant == 'smoke'
  config.data.image_size = 64
  # Stage 1 at CPU scale (docs/stage1.md): one global token per
  # frame (patch = image, tubelet 1), predictive masks (frame 0 -> frames 1-3), features
  # standardised over the batch (what keeps it from collapsing), online targets (momentum 0),
  # a light SIGReg over per-frame pooled features (it planned best; heavier made it worse);
  # the export appends the latent's 8 slowest directions, weighted 2 (the cost's global shape:
  # Wall MPC 67.7 % -> 93.8 %).
  config.encoder = ml_collections.ConfigDict(dict(
      preset='tiny', image_size=64, patch_size=64, tubelet_size=1, width=96, depth=4,
      num_heads=4, pos_embed='sincos3d', stem_channels=()))  # named so a flag can set it
  config.pretrain.update(
      batch_size=16 if smoke else 32, num_steps=30 if smoke else 600, num_frames=4, lr=1e-3,
      warmup_steps=5 if smoke else 50, grad_clip_norm=1.0,
      mask_groups=(dict(num_blocks=1, spatial_scale=1.0, context_frames=1),),
      objective='vjepa_sigreg', sigreg_samples='frames', sigreg_weight=0.01, standardise=True,
      ema_momentum=0.0, slow_readout=8, slow_readout_mode='append', slow_readout_weight=2.0,
      predictor=dict(width=64, depth=2, num_heads=4), dtype='float32',
      log_every=10 if smoke else 50, checkpoint_every=20 if smoke else 200,
      probe_train_trajectories=32 if smoke else 100, probe_val_trajectories=16 if smoke else 50,
      geometry_frames=256 if smoke else 2000)
  if smoke:
    config.lewm.update(num_steps=50, log_every=10, checkpoint_every=25, eval_batch_size=16,
                       eval_num_batches=2, statistics_batches=2, geometry_frames=256)
  # A narrow AdaLN predictor on the tiny encoder (one global token of width 96); lr 1e-3 constant
  # (a cosine at 2e-3 and the residual option were no better on 2 cores).
  config.world_model.update(
      # embed_dim unset (= the latent's width), named so a flag can set it for a narrow latent
      # (`pretrain.slow_readout`).
      predictor_config=dict(depth=3, num_heads=4, mlp_ratio=4.0,
                            embed_dim=config_dict.placeholder(int)),
      batch_size=16 if smoke else 32, num_steps=50 if smoke else 3000, lr=1e-3,
      dtype='float32', log_every=10 if smoke else 100,
      checkpoint_every=25 if smoke else 1000, eval_batch_size=16 if smoke else 32,
      eval_num_batches=2 if smoke else 8)
  # The reference protocol (one open-loop plan per episode) at a CPU budget, plus MPC.
  config.planning.update(num_episodes=8 if smoke else 96, num_gifs=2 if smoke else 4,
                         episode_batch_size=8 if smoke else 16)
  config.planning.cem.update(num_samples=64 if smoke else 100, num_iters=5 if smoke else 10)
  if not smoke:
    # Our MPC: replan from the observed state after every model step, warm-started, with the
    # paper's 300 samples: each planned better than the alternative (docs/results.md).
    config.planning_extra.mpc = dict(num_execute=1, warm_start=True, cem=dict(num_samples=300))
  return config


def end_to_end_variant(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """LeWorldModel instead of stages 1 + 2 (an environment's CPU variants that default to it:
  Push-T), without the 'pixels_only' row when LeWM reads no proprio (the default)."""
  config.method = 'lewm'
  return drop_repeated_pixels_only_row(config)


def drop_repeated_pixels_only_row(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Without proprio in the method's model (`proprio_emb_dim=0`) every planning row scores
  pixels, so the 'pixels_only' row would repeat the main one: it goes."""
  section = 'lewm' if config.method == 'lewm' else 'world_model'
  if not config[section].proprio_emb_dim:
    del config.planning_extra['pixels_only']
  return config


def paper_vjepa_variant(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Paper scale with a V-JEPA-trained ViT-S/16 encoder (3D RoPE, 16-frame clips)."""
  config.encoder_source = 'pretrain'
  return config


def paper_vitg_variant(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Stage 1 at V-JEPA 2's ViT-g/16 scale: frames rendered at its 256 px, the batch split over
  all chips along `fsdp`, which the partition rules also shard every kernel over (one chip's
  HBM cannot hold the parameters, EMA target and AdamW moments: docs/pods.md)."""
  paper_vjepa_variant(config)
  config.encoder = ml_collections.ConfigDict(dict(preset='vjepa2_giant'))
  config.data.image_size = 256
  config.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1))
  # The patch embedding's kernel (t, p, p, C, D) splits along D: its first dimension, the
  # tubelet (2), leaves it whole on every chip under the generic kernel rule.
  config.partition_rules = [('patch_embed/proj/kernel', (None, None, None, None, 'fsdp')),
                            *config.partition_rules]
  return config


def apply_variant(config: ml_collections.ConfigDict, *, smoke_data: dict,
                  tiny_data: dict) -> ml_collections.ConfigDict:
  """The variant's changes on top of an environment's paper config: the CPU variants run the
  three-stage pipeline at CPU scale (`cpu_variant`, docs/stage1.md) on `smoke_data` /
  `tiny_data` (overrides of the `data` section)."""
  if config.variant in ('smoke', 'tiny'):
    cpu_variant(config)
    config.data.update(smoke_data if config.variant == 'smoke' else tiny_data)
  elif config.variant == 'paper_vjepa':
    paper_vjepa_variant(config)
  elif config.variant == 'paper_vitg':
    paper_vitg_variant(config)
  return config
