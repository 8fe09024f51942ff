"""SIGReg: sketched isotropic-Gaussian regulariser of LeJEPA / LeWorldModel (docs/reference.md §9).

Embeddings are pushed towards an isotropic standard Gaussian, which rules out collapse without
an EMA target or a stop-gradient. The test is the Epps-Pulley statistic on random 1-D
projections: for M unit directions u (redrawn every step) and the projections h = z . u of the
B embeddings, the squared distance between the empirical characteristic function and the
standard normal one, `|mean_b exp(i t h_b) - exp(-t^2/2)|^2`, integrated over t in [-3, 3]
against the weight `exp(-t^2/2)`. The integrand is even in t, so it is integrated over the
17 knots of [0, 3] with trapezoid weights and doubled. The statistic is scaled by B (so its
null distribution does not shrink with the batch) and averaged over directions and time steps.

The batch mean is a plain `jnp.mean` over the batch axis: under `jax.jit` with the batch sharded
over a mesh it is the mean over the **global** batch (XLA inserts the cross-device reduction),
unlike the reference LeWM code, which computes it per device.
"""

import jax
import jax.numpy as jnp

NUM_KNOTS = 17
MAX_FREQUENCY = 3.0
NUM_DIRECTIONS = 1024


def knots_and_weights(num_knots: int = NUM_KNOTS, max_frequency: float = MAX_FREQUENCY
                      ) -> tuple[jax.Array, jax.Array]:
  """Frequencies `t (K,)` on [0, max_frequency] and quadrature weights `(K,)`.

  The weights are trapezoid weights times 2 (the even integrand over [-T, T]) times the
  Gaussian window `exp(-t^2/2)`.
  """
  if num_knots < 2:
    raise ValueError(f'SIGReg needs >= 2 knots, got {num_knots}')
  t = jnp.linspace(0.0, max_frequency, num_knots, dtype=jnp.float32)
  dt = max_frequency / (num_knots - 1)
  trapezoid = jnp.full((num_knots,), dt, jnp.float32).at[jnp.array([0, -1])].set(dt / 2)
  return t, 2.0 * trapezoid * jnp.exp(-0.5 * jnp.square(t))


def random_directions(key: jax.Array, dim: int, num_directions: int = NUM_DIRECTIONS
                      ) -> jax.Array:
  """`(D, M)` float32 Gaussian directions normalised to unit length (one per column)."""
  directions = jax.random.normal(key, (dim, num_directions), jnp.float32)
  return directions / jnp.linalg.norm(directions, axis=0, keepdims=True)


def sigreg_statistic(embeddings: jax.Array, directions: jax.Array,
                     num_knots: int = NUM_KNOTS, max_frequency: float = MAX_FREQUENCY
                     ) -> jax.Array:
  """SIGReg of `(T, B, D)` embeddings along given unit `directions (D, M)`; scalar float32.

  About 1 for standard-normal embeddings (sampling noise, scaled by B); a batch collapsed to
  the origin scores `B * sum_k w_k (1 - exp(-t_k^2/2))^2` (12.87 for B = 32) and its gradient
  vanishes there (it is proportional to the spread), so SIGReg alone cannot undo a collapse.
  """
  if embeddings.ndim != 3:
    raise ValueError(f'SIGReg takes embeddings (T, B, D); got shape {embeddings.shape} '
                     '(add a leading time axis of 1 for single frames)')
  if directions.shape[0] != embeddings.shape[-1]:
    raise ValueError(f'directions {directions.shape} do not match embedding width '
                     f'{embeddings.shape[-1]}')
  t, weights = knots_and_weights(num_knots, max_frequency)
  projections = embeddings.astype(jnp.float32) @ directions          # (T, B, M)
  phase = projections[..., None] * t                                   # (T, B, M, K)
  real = jnp.mean(jnp.cos(phase), axis=1) - jnp.exp(-0.5 * jnp.square(t))  # (T, M, K)
  imag = jnp.mean(jnp.sin(phase), axis=1)
  error = (jnp.square(real) + jnp.square(imag)) @ weights               # (T, M)
  return jnp.mean(error) * embeddings.shape[1]


def sigreg(key: jax.Array, embeddings: jax.Array, num_directions: int = NUM_DIRECTIONS,
           num_knots: int = NUM_KNOTS, max_frequency: float = MAX_FREQUENCY) -> jax.Array:
  """SIGReg of `(T, B, D)` embeddings on `num_directions` directions drawn from `key`."""
  directions = random_directions(key, embeddings.shape[-1], num_directions)
  return sigreg_statistic(embeddings, directions, num_knots, max_frequency)
