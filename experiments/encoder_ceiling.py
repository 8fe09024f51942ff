r"""Supervised ceiling of the LeWM encoder: can this architecture read the state in this many steps?

  python -m experiments.encoder_ceiling --config=experiments/configs/push_t.py:tiny \
      --num_steps=3000 --out=/tmp/push_t_ceiling.json

Trains the config's LeWM encoder (`lewm.encoder`) from its random init, with a linear head, to
regress the true probe targets (the block's centre of gravity, angle, the pusher on Push-T) from
frames of random states, then prints each probe target group's error next to the random-init
encoder's (jepa_jax/diagnostics/ceiling.py). A diagnostic: the pipeline never sees the state. The
LeWM stage writes the same measures for its own encoder to `world_model/summary.json`
(`geometry_probe_error_<group>`), so the two read side by side.
"""

from absl import flags
from ml_collections import config_flags

from experiments import cli
from experiments import configs
from jepa_jax import envs
from jepa_jax import outputs
from jepa_jax.diagnostics import ceiling
from jepa_jax.lewm import train as lewm_train
from jepa_jax.models import vit
from jepa_jax.representation import encoder as encoder_lib

config_flags.DEFINE_config_file('config', configs.WALL_TINY, 'Experiment config (file:variant).')
_STEPS = flags.DEFINE_integer('num_steps', None,
                              'Adam steps (default: the config\'s lewm.num_steps).')
_BATCH = flags.DEFINE_integer('batch_size', 128, 'Frames per step, each of a new random state.')
_LR = flags.DEFINE_float('lr', 1e-3, 'Adam step size.')
_OUT = flags.DEFINE_string('out', None, 'Optional JSON file for every measure.')
FLAGS = flags.FLAGS


def main(argv):
  del argv
  config = FLAGS.config
  cfg = lewm_train.as_lewm_config(config.lewm)
  encoder = vit.ViTEncoder(encoder_lib.encoder_config(cfg.encoder, num_frames=1))
  env = envs.get(config.env)
  num_steps = _STEPS.value or cfg.num_steps
  _, measured = ceiling.train_ceiling(
      encoder, env, image_size=config.data.image_size, num_steps=num_steps,
      batch_size=_BATCH.value, lr=_LR.value, seed=int(config.seed),
      geometry_frames=cfg.geometry_frames)
  names = ['px'] + [group for group, _ in env.probe_groups]
  print(f'{config.env}: encoder {dict(cfg.encoder)}, {num_steps} supervised steps x '
        f'{_BATCH.value} frames in {measured["train_seconds"]:.0f} s, final loss '
        f'{measured["final_loss"]:.3f} (1.0 = the mean predictor)')
  print('probe error (ridge on the frozen latent) | supervised ceiling | random init')
  for name in names:
    print(f'{name} | {measured[f"probe_error_{name}"]:.3f} | '
          f'{measured[f"probe_error_{name}_random_encoder"]:.3f}')
  if _OUT.value:
    outputs.write_json(_OUT.value, measured)


if __name__ == '__main__':
  cli.run(main)
