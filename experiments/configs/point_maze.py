"""PointMaze (D4RL maze2d-umaze) configs: `--config=experiments/configs/point_maze.py:<variant>`
(see base.py for the variants).

Data as DINO-WM's: random-action trajectories, 2000 of 100 steps at paper scale. The CPU
variants run the three-stage pipeline, as Wall's do (see wall.py), with proprio: the main row
reads it and the `pixels_only` row scores the visual latents alone. (At 64 px the ball is under
2 px wide: from pixels alone LeWM, `--config.method=lewm`, plans 28 % with MPC, the three-stage
pipeline 48 %, and 66 % with the latent alone, `--config.pretrain.slow_readout=0`;
docs/stage1.md.)
"""

from experiments.configs import base


def get_config(variant='tiny'):
  config = base.get_config('point_maze', variant)
  config.data.update(num_train_trajectories=2000, num_validation_trajectories=200)
  config.world_model.num_steps = 100_000
  config.lewm.proprio_emb_dim = 16
  # With labeled_fraction < 1, an inverse model on proprio (the ball's velocity shows the force)
  # labels the other trajectories for stage 2 and LeWM: at 10 % labels both then plan as with
  # every label (docs/stage1.md). No effect at labeled_fraction 1.
  config.world_model.pseudo_labels = True
  config.lewm.pseudo_labels = True
  return base.apply_variant(
      config,
      smoke_data=dict(num_train_trajectories=64, num_validation_trajectories=16,
                      trajectory_length=40),
      tiny_data=dict(num_train_trajectories=500, num_validation_trajectories=50,
                     trajectory_length=100))
