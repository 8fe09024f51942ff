"""What the `world_model` (stage 2) and `lewm` config sections share: the training loop, the
action-conditioned predictor with its proprio channel, and the open-loop rollout validation.
"""

from __future__ import annotations

import dataclasses

from jepa_jax import config_sections
from jepa_jax import training
from jepa_jax.models import predictors
from jepa_jax.world_model import model as model_lib


def predictor_keys(kind: str) -> tuple[str, ...]:
  """The keys a config section's `predictor_config` may set for predictor `kind`: its config
  dataclass's fields without the ones the world model derives (`DERIVED_PREDICTOR_KEYS`) and,
  for 'adaln_zero', without the zero_init it forces."""
  forced = ('zero_init',) if kind == 'adaln_zero' else ()
  return config_sections.field_names(predictors.PREDICTOR_CONFIGS[kind],
                                     exclude=model_lib.DERIVED_PREDICTOR_KEYS + forced)


@dataclasses.dataclass(frozen=True, kw_only=True)
class PredictorTrainingConfig(training.TrainLoopConfig):
  """The loop settings (`TrainLoopConfig`) plus the predictor and its validation; defaults are
  stage 2's paper values (docs/reference.md §4).

  predictor: a kind of `predictors.PREDICTOR_KINDS` ('adaln', 'adaln_zero', 'dino_wm',
    'vjepa2_ac').
  predictor_config: keys of that predictor's config dataclass (depth, num_heads, mlp_ratio,
    ...; `predictor_keys`); latent_dim, grid_size, action_dim and proprio_emb_dim are derived
    from the encoder and the data.
  proprio_emb_dim: proprio embedding width Pe; 0 trains without proprioception.
  proprio_weight: weight of the proprio prediction term of the loss.
  eval_horizon: open-loop rollout steps k of the validation; eval_batch_size, eval_num_batches:
    validation clips = their product (from the validation split).
  pseudo_labels: with `labeled_fraction` < 1, train on the unlabelled trajectories too, with
    the actions an inverse dynamics model fit on the labelled ones reads off their proprio (or,
    for stage 2 without proprio, the frozen latent): world_model/pseudo_labels.py. False: the
    labelled trajectories only.
  """
  predictor: str = 'adaln'
  predictor_config: dict = dataclasses.field(
      default_factory=lambda: dict(depth=6, num_heads=16, mlp_ratio=4.0))
  proprio_emb_dim: int = 16
  proprio_weight: float = 1.0
  eval_horizon: int = 6
  eval_batch_size: int = 64
  eval_num_batches: int = 8
  pseudo_labels: bool = False

  def __post_init__(self):
    super().__post_init__()
    section = self.SECTION
    if self.predictor not in predictors.PREDICTOR_KINDS:
      raise ValueError(f'{section}.predictor={self.predictor!r}; choose one of '
                       f'{predictors.PREDICTOR_KINDS}')
    config_sections.check_keys(self.predictor_config, predictor_keys(self.predictor),
                               f'{section}.predictor_config')
    config_sections.require_positive(self, section, (
        'eval_horizon', 'eval_batch_size', 'eval_num_batches'))
    if self.proprio_emb_dim < 0:
      raise ValueError(f'{section}.proprio_emb_dim must be >= 0 (0 = no proprio), got '
                       f'{self.proprio_emb_dim}')
