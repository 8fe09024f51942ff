"""Supervised ceiling of an encoder architecture: how well does it read the state when told to?

`train_ceiling` trains an encoder from its random init, plus a linear head on its flattened
latent standardised over the batch (LeWM's `batch_normalise`, what LeWM's predictor reads: the
raw output of a one-token ViT varies by about 2 % over frames, and a head on it barely trains),
to regress the environment's standardised probe targets (`env.probe_targets`) from
frames of random states (`env.random_state`, rendered afresh at every step, so no dataset is
involved), with Adam and a mean squared error; then it measures the trained encoder with
`geometry.compare_encoders`, next to the same architecture at its random init.

The true state is the training target here, so this is a diagnostic, never a pipeline stage:
it bounds what a self-supervised objective (LeWM, V-JEPA) can be expected to put into the same
architecture in the same number of steps. Where the ceiling itself cannot read a target group
(Push-T's block angle at the CPU budget), no objective is the limit: the architecture and the
step budget are.
"""

from __future__ import annotations

import functools
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jepa_jax import console
from jepa_jax.envs import base
from jepa_jax.representation import standardise
from jepa_jax.models import vit
from jepa_jax.representation import geometry

STATISTICS_STATES = 4096  # random states whose probe-target mean / std standardise the targets


def _frames_and_targets(env: base.Environment, image_size: int, key: jax.Array, count: int):
  """uint8 frames `(count, S, S, 3)` of random states and their probe targets `(count, K)`."""
  states = geometry.random_states(env, key, count)
  frames = jax.vmap(lambda s: env.render(s, image_size))(states)
  return frames, jax.vmap(env.probe_targets)(states)


def train_ceiling(encoder: nn.Module, env: base.Environment, *, image_size: int,
                  num_steps: int, batch_size: int = 128, lr: float = 1e-3, seed: int = 0,
                  geometry_frames: int = 2000) -> tuple[dict, dict]:
  """Trains `encoder` + a linear head on the true probe targets; measures both initialisations.

  Args:
    encoder: a Flax encoder of normalised clips `(B, 1, S, S, 3)` -> latents `(B, 1, ...)` (the
      LeWM / stage-1 ViT); its latent is flattened per frame for the head.
    env: the environment whose `random_state`, `render` and `probe_targets` make the data.
    image_size: rendered frame size S (px).
    num_steps, batch_size, lr: Adam steps, frames per step (each a new random state), step size.
    geometry_frames: frames of the probe fit (`geometry.measure_encoder`; half as many scored).

  Returns:
    `(encoder_params, measures)`: the trained encoder's params and the
    `geometry.compare_encoders` keys for 'ceiling' (unsuffixed) and 'random_encoder' (suffix
    `_random_encoder`), plus 'final_loss' (mean squared error of the standardised targets over
    the last 10 % of steps; 1.0 is the mean predictor's) and 'train_seconds'.
  """
  if num_steps < 1 or batch_size < 1:
    raise ValueError(f'train_ceiling needs num_steps >= 1 and batch_size >= 1; got '
                     f'{num_steps}, {batch_size}')
  init_key, stats_key, data_key = jax.random.split(jax.random.PRNGKey(seed), 3)
  stats_targets = geometry.probe_targets(
      env, geometry.random_states(env, stats_key, STATISTICS_STATES))
  target_mean = jnp.asarray(stats_targets.mean(0), jnp.float32)
  target_std = jnp.asarray(stats_targets.std(0) + 1e-6, jnp.float32)

  def latent(encoder_params, frames):  # uint8 (B, S, S, 3) -> (B, ...) without the frame axis
    clips = vit.preprocess_frames(frames, image_size)[:, None]
    return encoder.apply({'params': encoder_params}, clips)[:, 0]

  head = nn.Dense(stats_targets.shape[-1])
  encoder_key, head_key = jax.random.split(init_key)
  random_encoder = encoder.init(encoder_key, jnp.zeros((1, 1, image_size, image_size, 3))
                                )['params']
  sample = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.uint8)
  width = int(np.prod(jax.eval_shape(latent, random_encoder, sample).shape[1:]))
  params = {'encoder': random_encoder,
            'head': head.init(head_key, jnp.zeros((1, width)))['params']}
  optimiser = optax.adam(lr)

  def loss_fn(params, frames, targets):
    features, _, _ = standardise.batch_normalise(latent(params['encoder'], frames))
    features = features.reshape(len(frames), -1)
    prediction = head.apply({'params': params['head']}, features)
    return jnp.mean(jnp.square(prediction - (targets - target_mean) / target_std))

  @jax.jit
  def train_step(params, opt_state, key):
    frames, targets = _frames_and_targets(env, image_size, key, batch_size)
    loss, grads = jax.value_and_grad(loss_fn)(params, frames, targets)
    updates, opt_state = optimiser.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  opt_state = optimiser.init(params)
  losses = []
  start = time.perf_counter()
  with console.Progress(num_steps, f'supervised ceiling ({env.name})') as progress:
    for key in jax.random.split(data_key, num_steps):
      params, opt_state, loss = train_step(params, opt_state, key)
      losses.append(loss)
      progress.update(1)
  losses = np.asarray(jax.device_get(losses))
  seconds = time.perf_counter() - start

  encode = jax.jit(latent)
  measured = geometry.compare_encoders(
      {'ceiling': functools.partial(encode, params['encoder']),
       'random_encoder': functools.partial(encode, random_encoder)},
      env, image_size=image_size, num_fit=geometry_frames, num_eval=geometry_frames // 2,
      seed=seed)
  tail = max(1, num_steps // 10)
  return params['encoder'], {**measured, 'final_loss': float(losses[-tail:].mean()),
                             'train_seconds': seconds}
