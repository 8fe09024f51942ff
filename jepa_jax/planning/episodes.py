"""Evaluation episodes: the reference's seeded set, or our random one.

The reference (`eval.py`, `plan_evaluator.py`) seeds global episode `ep` with
`ep_seed = (s * s + ep * s) mod (2**32 - 2)`, where `s` is the process's local seed: `meta.seed`
(1 in every paper config) in a one-process run. With `distribute_multitask_eval` (the paper's
launch: 8 ranks, `seed_shift: horizon_1000`, so the shift is `horizon * 1000` = 6000) rank r uses
`s = meta.seed + r * seed_shift` for its contiguous block of episodes (the first
`num_episodes % world_size` ranks take one more). Wall's start and goal are then
`DotWall.generate_random_state(ep_seed)`, our `Environment.reference_start_goal`.

The 'random' set draws episode i from `env.sample_start_goal(fold_in(PRNGKey(seed), i))`, so an
episode does not depend on how many are drawn.
"""

from typing import List, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from jepa_jax.envs.base import Environment

EPISODE_SETS = ('reference', 'random')
REFERENCE_NUM_EPISODES = 96   # `meta.eval_episodes` of the Wall / PointMaze / Push-T configs
REFERENCE_META_SEED = 1       # `meta.seed` of every paper config
SEED_MODULUS = 2 ** 32 - 2


def rank_episodes(num_episodes: int, world_size: int, rank: int) -> range:
  """The global episode indices rank `rank` of `world_size` evaluates in the reference: a
  contiguous block; the first `num_episodes % world_size` ranks take one extra."""
  per_rank, extra = divmod(num_episodes, world_size)
  first = rank * per_rank + min(rank, extra)
  return range(first, first + per_rank + (1 if rank < extra else 0))


def reference_episode_seeds(num_episodes: int = REFERENCE_NUM_EPISODES,
                            meta_seed: int = REFERENCE_META_SEED, world_size: int = 1,
                            seed_shift: int = 0) -> List[int]:
  """The reference's `ep_seed` of global episodes `0..num_episodes-1` (Python ints).

  Args:
    num_episodes: episodes in the evaluation (96 in the paper configs).
    meta_seed: `meta.seed` (1 in the paper configs). 0 is refused: every seed would be 0.
    world_size: processes of the reference launch (1: one process; the paper's: 8).
    seed_shift: per-rank shift of the local seed with `distribute_multitask_eval`
      (the paper's `horizon_1000` = horizon * 1000 = 6000); ignored when world_size is 1.
  """
  if num_episodes < 1:
    raise ValueError(f'num_episodes={num_episodes} must be >= 1')
  if meta_seed < 1:
    raise ValueError(f'reference meta_seed={meta_seed} must be >= 1 (with 0 every episode seed '
                     'is 0); the paper uses 1')
  if not 1 <= world_size <= num_episodes:
    raise ValueError(f'world_size={world_size} must be in [1, num_episodes={num_episodes}] '
                     '(the reference needs at least one episode per rank)')
  seeds = []
  for rank in range(world_size):
    local = meta_seed + rank * seed_shift
    seeds += [(local * local + ep * local) % SEED_MODULUS
              for ep in rank_episodes(num_episodes, world_size, rank)]
  return seeds


def episode_starts_goals(env: Environment, episode_set: str,
                         num_episodes: int = REFERENCE_NUM_EPISODES, seed: int = 0, *,
                         meta_seed: int = REFERENCE_META_SEED, world_size: int = 1,
                         seed_shift: int = 0) -> Tuple[jax.Array, jax.Array, dict]:
  """Start and goal states of the evaluation episodes.

  Args:
    env: the environment.
    episode_set: 'reference' (the reference's seeded draws, `env.reference_start_goal` on
      `reference_episode_seeds(num_episodes, meta_seed, world_size, seed_shift)`; `seed` is not
      used) or 'random' (`env.sample_start_goal(fold_in(PRNGKey(seed), i))`, jitted + vmapped).
    num_episodes: E.
  Returns:
    starts (E, state_dim) f32, goals (E, state_dim) f32, and an info dict (JSON-able) naming
    the set and how it was drawn (`episode_seeds` for the reference set).
  """
  if episode_set not in EPISODE_SETS:
    raise ValueError(f'episode_set={episode_set!r} must be one of {EPISODE_SETS}')
  if num_episodes < 1:
    raise ValueError(f'num_episodes={num_episodes} must be >= 1')
  if episode_set == 'random':
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.PRNGKey(seed), i))(
        jnp.arange(num_episodes))
    starts, goals = jax.jit(jax.vmap(env.sample_start_goal))(keys)
    info = dict(episode_set='random', num_episodes=num_episodes, seed=int(seed))
    return starts.astype(jnp.float32), goals.astype(jnp.float32), info
  if env.reference_start_goal is None:
    raise ValueError(f"environment {env.name!r} has no reference episode draw "
                     "(reference_start_goal); use episode_set='random'")
  seeds = reference_episode_seeds(num_episodes, meta_seed, world_size, seed_shift)
  pairs = [env.reference_start_goal(s) for s in seeds]
  starts = np.stack([start for start, _ in pairs]).astype(np.float32)
  goals = np.stack([goal for _, goal in pairs]).astype(np.float32)
  info = dict(episode_set='reference', num_episodes=num_episodes, meta_seed=meta_seed,
              world_size=world_size, seed_shift=seed_shift if world_size > 1 else 0,
              episode_seeds=seeds)
  return jnp.asarray(starts), jnp.asarray(goals), info
