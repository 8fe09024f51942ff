"""Push-T configs: `--config=experiments/configs/push_t.py:<variant>` (see base.py).

The block's pose is only in the frames: proprio is the pusher's position and velocity. Data:
the scripted noisy pusher of `jepa_jax.envs.push_t` (DINO-WM used 18.5k noisy expert
trajectories; ours are generated here). Paper batch 256 (REFERENCE.md section 4). The CPU
variants train LeWorldModel from pixels alone, as Wall's do (see wall.py).
"""

from experiments.configs import base


def get_config(variant='tiny'):
  config = base.get_config('push_t', variant)
  config.data.update(num_train_trajectories=18_500, num_validation_trajectories=500)
  config.world_model.update(batch_size=256, num_steps=200_000)
  config.planning.episode_set = 'random'  # goals come from trajectories: no seeded draw
  return base.apply_variant(
      config,
      smoke_data=dict(num_train_trajectories=64, num_validation_trajectories=16,
                      trajectory_length=40),
      tiny_data=dict(num_train_trajectories=1000, num_validation_trajectories=50,
                     trajectory_length=100))
