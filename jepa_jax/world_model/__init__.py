"""Stage 2: the action-conditioned world model on a frozen encoder.

config.py    PredictorTrainingConfig: the settings the world_model and lewm sections share
model.py     WorldModel (encode / encode_proprio / predict / unroll / env_actions) and its export
losses.py    teacher forcing + "2roll" multistep rollout loss
train.py     jitted, sharded train step and `train(config, workdir, data_dir, encoder_path)`
validate.py  open-loop rollout error vs the constant-latent baseline
"""

from jepa_jax.world_model.model import WorldModel, load_world_model

__all__ = ['WorldModel', 'load_world_model']
