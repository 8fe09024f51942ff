"""The trainers' config sections: one loop section (`training.TrainLoopConfig`) with one set of
names and one validation for stage 1, stage 2 and LeWM; the model dicts they hold checked when
the section is read; the renamed keys reachable from the command line."""

import os

import numpy as np
import pytest
from absl import flags
from ml_collections import config_flags

from jepa_jax import training
from jepa_jax.lewm.train import LeWMConfig, as_lewm_config
from jepa_jax.planning.config import as_planning_config
from jepa_jax.pretrain.train import PretrainConfig, as_pretrain_config
from jepa_jax.world_model.train import WorldModelConfig, as_world_model_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Each trainer's section with the settings it needs (stage 1 has no default batch or length).
SECTIONS = {'pretrain': (PretrainConfig, dict(batch_size=8, num_steps=10, warmup_steps=2)),
            'world_model': (WorldModelConfig, {}), 'lewm': (LeWMConfig, {})}


def _one_line_error(cls, error, match, **settings):
  with pytest.raises(error, match=match) as info:
    cls(**settings)
  assert '\n' not in str(info.value)


@pytest.mark.parametrize('section', sorted(SECTIONS))
def test_every_trainer_has_the_loop_section_and_its_checks(section):
  cls, needed = SECTIONS[section]
  assert issubclass(cls, training.TrainLoopConfig) and cls.SECTION == section
  for field in ('batch_size', 'num_steps', 'lr', 'schedule', 'warmup_steps', 'final_lr_ratio',
                'weight_decay', 'weight_decay_start', 'grad_clip_norm', 'dtype', 'log_every',
                'checkpoint_every', 'max_to_keep'):
    assert hasattr(cls(**needed), field), field
  for bad, match in [(dict(num_steps=0), rf'^{section}\.num_steps must be >= 1, got 0$'),
                     (dict(batch_size=-4), rf'^{section}\.batch_size must be >= 1'),
                     (dict(log_every=0), rf'^{section}\.log_every must be >= 1'),
                     (dict(dtype='fp8'), rf"^{section}\.dtype='fp8'; choose one of"),
                     (dict(schedule='linear'), rf"^{section}\.schedule='linear'; choose one of"),
                     (dict(lr=-1.0), rf'^{section}\.lr must be >= 0')]:
    _one_line_error(cls, ValueError, match, **{**needed, **bad})


def test_each_section_keeps_its_paper_defaults():
  """The values each trainer ran with before the sections shared a base."""
  pretrain = PretrainConfig(batch_size=8, num_steps=10)
  assert (pretrain.lr, pretrain.weight_decay, pretrain.schedule, pretrain.warmup_steps,
          pretrain.grad_clip_norm, pretrain.dtype, pretrain.log_every,
          pretrain.checkpoint_every, pretrain.max_to_keep) == (
              1e-3, 0.04, 'warmup_cosine', 100, 0.0, 'float32', 50, 500, 2)
  wm = WorldModelConfig()
  assert (wm.batch_size, wm.num_steps, wm.lr, wm.weight_decay, wm.weight_decay_start,
          wm.grad_clip_norm, wm.schedule, wm.dtype, wm.checkpoint_every, wm.max_to_keep,
          wm.predictor, wm.proprio_emb_dim, wm.eval_batch_size) == (
              128, 50_000, 5e-4, 1e-6, 1e-7, 1.0, 'constant', 'bfloat16', 2000, 3, 'adaln', 16,
              64)
  lewm = LeWMConfig()
  assert (lewm.batch_size, lewm.num_steps, lewm.lr, lewm.weight_decay, lewm.weight_decay_start,
          lewm.grad_clip_norm, lewm.schedule, lewm.dtype, lewm.checkpoint_every,
          lewm.max_to_keep, lewm.predictor, lewm.proprio_emb_dim, lewm.eval_batch_size) == (
              32, 1000, 1e-3, 1e-6, None, 1.0, 'constant', 'float32', 1000, 2, 'adaln_zero', 0,
              32)


def test_stage_one_learning_rate_follows_its_section():
  """`learning_rate_schedule` of stage 1's section: warmup to lr, cosine to final_lr_ratio."""
  cfg = PretrainConfig(batch_size=8, num_steps=110, lr=2.0, warmup_steps=10,
                       final_lr_ratio=0.1)
  schedule = training.learning_rate_schedule(cfg)
  for step, want in [(0, 0.0), (5, 1.0), (10, 2.0), (60, 1.1), (110, 0.2)]:
    np.testing.assert_allclose(float(schedule(step)), want, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize('cls,settings,where,allowed', [
    (WorldModelConfig, dict(predictor_config=dict(dpeth=3)),
     'world_model.predictor_config.dpeth', 'depth'),
    (WorldModelConfig, dict(predictor='vjepa2_ac', predictor_config=dict(proprio_readout='x')),
     'world_model.predictor_config.proprio_readout', 'embed_dim'),
    # Derived from the encoder and the data: not a setting.
    (WorldModelConfig, dict(predictor_config=dict(depth=2, latent_dim=64)),
     'world_model.predictor_config.latent_dim', 'num_heads'),
    (LeWMConfig, dict(predictor_config=dict(zero_init=False)),
     'lewm.predictor_config.zero_init', 'modulation_std'),
    (LeWMConfig, dict(encoder=dict(preset='tiny', patch=16)), 'lewm.encoder.patch',
     'patch_size'),
    (PretrainConfig, dict(batch_size=8, num_steps=10, predictor=dict(width=16, heads=2)),
     'pretrain.predictor.heads', 'num_heads'),
    (PretrainConfig, dict(batch_size=8, num_steps=10, predictor=dict(width=16, embed_dim=32)),
     'pretrain.predictor.embed_dim', 'width'),
])
def test_unknown_model_dict_key_is_one_line_naming_it_and_the_keys(cls, settings, where,
                                                                   allowed):
  with pytest.raises(ValueError, match=rf'^unknown key {where}; the keys of ') as info:
    cls(**settings)
  message = str(info.value)
  assert '\n' not in message and allowed in message.split('; the keys of ')[1]


def test_unknown_predictor_kind_is_one_line():
  _one_line_error(WorldModelConfig, ValueError, r"^world_model.predictor='mlp'; choose one of",
                  predictor='mlp')


def _parse(*overrides):
  """The config `--config=experiments/configs/wall.py:smoke` with `overrides`, parsed by absl
  as the binaries do."""
  argv = ['test', f'--config={os.path.join(REPO, "experiments/configs/wall.py")}:smoke',
          *overrides]
  values = flags.FlagValues()
  config_flags.DEFINE_config_file('config', flag_values=values, sys_argv=argv)
  values(argv)
  return values.config


def test_renamed_keys_are_set_from_flags_and_the_old_names_are_refused():
  config = _parse('--config.pretrain.schedule=constant', '--config.world_model.dtype=bfloat16',
                  '--config.lewm.dtype=bfloat16', '--config.lewm.final_lr_ratio=0.1')
  assert as_pretrain_config(config.pretrain).schedule == 'constant'
  assert as_world_model_config(config.world_model).dtype == 'bfloat16'
  lewm = as_lewm_config(config.lewm)
  assert (lewm.dtype, lewm.final_lr_ratio) == ('bfloat16', 0.1)
  for old, name in (('--config.pretrain.lr_schedule=constant', 'lr_schedule'),
                    ('--config.world_model.compute_dtype=float32', 'compute_dtype')):
    with pytest.raises((KeyError, AttributeError), match=name):  # config_flags: no such key
      _parse(old)


def test_settings_unset_by_default_are_set_from_flags():
  """A field whose default is None (an unset EMA ramp end, weight-decay start, action bound)
  takes a value from a flag, and stays None without one."""
  config = _parse('--config.pretrain.ema_momentum_end=0.999',
                  '--config.lewm.weight_decay_start=0.01',
                  '--config.planning.action_low=-1.0', '--config.planning.action_high=(0.5,1.0)')
  assert as_pretrain_config(config.pretrain).ema_momentum_end == 0.999
  assert as_lewm_config(config.lewm).weight_decay_start == 0.01
  planning = as_planning_config(config.planning)
  assert (planning.action_low, planning.action_high) == (-1.0, (0.5, 1.0))
  assert as_pretrain_config(_parse().pretrain).ema_momentum_end is None
