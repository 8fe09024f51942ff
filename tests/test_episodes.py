"""Evaluation episode sets: the reference's seeds and draws, and the random set."""

import dataclasses

import jax
import numpy as np
import pytest

from jepa_jax.envs import wall
from jepa_jax.planning import episodes


def test_one_process_reference_seeds():
  # s = meta.seed = 1: ep_seed = 1 + ep.
  assert episodes.reference_episode_seeds() == list(range(1, 97))
  s = 3
  assert episodes.reference_episode_seeds(5, meta_seed=s) == [s * s + ep * s for ep in range(5)]


def test_seed_modulus_is_two_to_the_32_minus_2():
  s = 2 ** 31  # s*s + ep*s overflows 32 bits: reduced mod 2**32 - 2 with Python ints
  got = episodes.reference_episode_seeds(3, meta_seed=s)
  assert got == [(s * s + ep * s) % 4294967294 for ep in range(3)]
  assert all(0 <= g < 2 ** 32 - 2 for g in got)


def test_paper_launch_seeds_shift_per_rank():
  # 8 ranks x 12 episodes; rank r's local seed is 1 + r * 6000 (horizon 6 * 1000), and the
  # episode index stays global.
  got = episodes.reference_episode_seeds(96, meta_seed=1, world_size=8, seed_shift=6000)
  want = []
  for ep in range(96):
    local = 1 + (ep // 12) * 6000
    want.append((local * local + ep * local) % (2 ** 32 - 2))
  assert got == want
  assert got[:12] == list(range(1, 13))  # rank 0 sees the one-process episodes


def test_uneven_split_gives_the_first_ranks_one_more():
  assert [list(episodes.rank_episodes(10, 4, r)) for r in range(4)] == [
      [0, 1, 2], [3, 4, 5], [6, 7], [8, 9]]
  got = episodes.reference_episode_seeds(10, meta_seed=2, world_size=4, seed_shift=100)
  ranks = [0, 0, 0, 1, 1, 1, 2, 2, 3, 3]
  assert got == [((2 + r * 100) ** 2 + ep * (2 + r * 100)) % (2 ** 32 - 2)
                 for ep, r in enumerate(ranks)]


def test_reference_set_uses_the_env_draw():
  starts, goals, info = episodes.episode_starts_goals(wall.ENV, 'reference', 6)
  assert starts.shape == goals.shape == (6, 2) and starts.dtype == np.float32
  assert info['episode_seeds'] == [1, 2, 3, 4, 5, 6] and info['episode_set'] == 'reference'
  for i, seed in enumerate(info['episode_seeds']):
    start, goal = wall.reference_start_goal(seed)
    np.testing.assert_array_equal(starts[i], start.astype(np.float32))
    np.testing.assert_array_equal(goals[i], goal.astype(np.float32))


def test_reference_set_needs_an_env_with_a_reference_draw():
  env = dataclasses.replace(wall.ENV, name='no_ref', reference_start_goal=None)
  with pytest.raises(ValueError, match="'no_ref' has no reference episode draw"):
    episodes.episode_starts_goals(env, 'reference', 4)


def test_random_set_is_fold_in_per_episode_and_prefix_stable():
  starts, goals, info = episodes.episode_starts_goals(wall.ENV, 'random', 5, seed=7)
  assert info == dict(episode_set='random', num_episodes=5, seed=7)
  for i in (0, 4):
    # Eager here, jitted there: XLA may fuse `lo + (hi - lo) * u` into one FMA (1 ulp).
    start, goal = wall.sample_start_goal(jax.random.fold_in(jax.random.PRNGKey(7), i))
    np.testing.assert_allclose(starts[i], start, rtol=1e-6)
    np.testing.assert_allclose(goals[i], goal, rtol=1e-6)
  more, _, _ = episodes.episode_starts_goals(wall.ENV, 'random', 8, seed=7)
  np.testing.assert_array_equal(more[:5], starts)


def test_bad_arguments_are_clear_errors():
  with pytest.raises(ValueError, match='episode_set'):
    episodes.episode_starts_goals(wall.ENV, 'paper', 4)
  with pytest.raises(ValueError, match='meta_seed'):
    episodes.reference_episode_seeds(4, meta_seed=0)
  with pytest.raises(ValueError, match='world_size'):
    episodes.reference_episode_seeds(4, world_size=5)
  with pytest.raises(ValueError, match='num_episodes'):
    episodes.episode_starts_goals(wall.ENV, 'random', 0)
