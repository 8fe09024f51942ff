"""Push-T configs: `--config=experiments/configs/push_t.py:<variant>` (see base.py).

The block's pose is only in the frames: proprio is the pusher's position and velocity. Data:
the scripted noisy pusher of `jepa_jax.envs.push_t` (DINO-WM used 18.5k noisy expert
trajectories; ours are generated here). Paper batch 256 (docs/reference.md §4). Unlike Wall's
and PointMaze's, the CPU variants train LeWorldModel (neither method plans Push-T at this scale,
and LeWM's CLS latent reads the thin pusher better: docs/push_t.md), reading the pusher's
proprio; the `pixels_only` row scores the visual latents alone.

Planning protocol: LeWorldModel's, whose goals we use (the state 25 data-policy steps ahead):
a 50-step budget (`push_t.EPISODE_STEPS`, twice the goal offset), CEM plans of 5 model steps
(25 env steps at frameskip 5), each executed whole before replanning from the observed state.
The row 'reference_open_loop' is jepa-wms' Push-T protocol on the same episodes: one open-loop
plan of 6 model steps (30 env steps; `configs/evals/simu_env_planning/pt`: goal_H 6, nas 6).
"""

from experiments.configs import base


def get_config(variant='tiny'):
  config = base.get_config('push_t', variant)
  config.data.update(num_train_trajectories=18_500, num_validation_trajectories=500)
  config.world_model.update(batch_size=256, num_steps=200_000)
  config.planning.episode_set = 'random'  # goals come from trajectories: no seeded draw
  config.planning.update(horizon=5, num_execute=5)
  # LeWM reads the pusher's proprio (DINO-WM's Push-T proprio): the block is only in the frames.
  config.lewm.proprio_emb_dim = 16
  if variant != 'smoke':
    config.planning_extra.reference_open_loop = dict(horizon=6, num_execute=6, episode_steps=30)
  config = base.apply_variant(
      config,
      smoke_data=dict(num_train_trajectories=64, num_validation_trajectories=16,
                      trajectory_length=40),
      tiny_data=dict(num_train_trajectories=1000, num_validation_trajectories=50,
                     trajectory_length=100))
  if variant in ('smoke', 'tiny'):
    base.end_to_end_variant(config)
    # LeWorldModel's latent, the CLS token of a ViT over 16 x 16 patches: it reads the 4 px wide
    # pusher better than Wall's one 64 px patch (docs/push_t.md). No convolutional stem (LeWM
    # read no more with it); `stem_channels=()` is named so a flag can set it.
    config.lewm.encoder.update(patch_size=16, use_cls_token=True, readout='cls',
                               pos_embed='sincos3d', stem_channels=())
  if variant == 'tiny':
    # At Wall's 1000 steps the encoder probed like a random one and nothing planned; SIGReg 0.02
    # spreads the scene's 5 degrees of freedom over more channels (docs/push_t.md).
    config.lewm.update(num_steps=3000, sigreg_weight=0.02)
  return config
