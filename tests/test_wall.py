"""Tests of the Wall (DotWall) environment against hand-worked numbers and closed forms.

Every expected position below is derived by hand from docs/reference.md §6; the comment
next to each case shows the arithmetic (p' = s + 2a; t = fraction of the step at the line).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special
import scipy.stats

from jepa_jax.envs import wall


_transition = jax.jit(wall.transition)   # one compile for all hand-worked cases
NUM_WALKS, WALK_STEPS = 300, 60


@jax.jit
def _walks(key, door_bias_prob):
  """NUM_WALKS data-policy walks from random starts: (starts (N, 2), actions (N, T, 2))."""
  keys = jax.random.split(key, 2 * NUM_WALKS)
  starts = jax.vmap(wall.random_start)(keys[:NUM_WALKS])
  actions = jax.vmap(lambda k, p: wall.random_walk_actions(
      k, WALK_STEPS, p, door_bias_prob=door_bias_prob))(keys[NUM_WALKS:], starts)
  return starts, actions


_rollouts = jax.jit(jax.vmap(wall.rollout))


def step(s, a):
  return np.asarray(_transition(jnp.array(s, jnp.float32), jnp.array(a, jnp.float32)))


CASES = {
    # p' = (10+2, 10+3): no line crossed.
    'free': ((10, 10), (1, 1.5), (12, 13)),
    # p' = (3, 21) crosses x=4 at t=(4-5)/(-2)=0.5 -> y=20.5; bounce (4+0.5, 20.5+0.5).
    'border_left': ((5, 20), (-1, 0.5), (4.5, 21.0)),
    # p' = (61, 38) crosses x=60 at t=0.5 -> y=39; bounce (60-0.5, 39+0.5).
    'border_right': ((59, 40), (1, -1), (59.5, 39.5)),
    # p' = (16, 3) crosses y=4 at t=0.5 -> x=15.5; bounce (15.5+0.5, 4+0.5).
    'border_top': ((15, 5), (0.5, -1), (16.0, 4.5)),
    # p' = (44, 61) crosses y=60 at t=0.5 -> x=44.5; bounce (44.5+0.5, 60-0.5).
    'border_bottom': ((45, 59), (-0.5, 1), (45.0, 59.5)),
    # s.x < 32 -> inner barrier x=29; p' = (30, 11), t=2/3 -> y=10+2/3 (not in [26, 34]);
    # bounce (29-0.5, 10.6667+0.5).
    'inner_from_left': ((27, 10), (1.5, 0.5), (28.5, 10 + 2 / 3 + 0.5)),
    # s.x >= 32 -> inner barrier x=35; p' = (34, 48), t=(35-37)/(-3)=2/3 -> y=50-4/3;
    # bounce (35+0.5, 48.6667+0.5).
    'inner_from_right': ((37, 50), (-1.5, -1), (35.5, 50 - 4 / 3 + 0.5)),
    # p' = (31, 31) crosses x=29 at y=30.5, inside the hole [26, 34]: free move.
    'door_enter': ((27, 30), (2, 0.5), (31, 31)),
    # p' = (37, 30) crosses x=29 at y=30 (hole); x=35 is not a barrier while s.x < 32.
    'door_traverse': ((27, 30), (5, 0), (37, 30)),
    # From the right room: inner x=35 at t=(35-38)/(-6)=1/2 -> y=30.5 (hole); p' = (32, 31).
    'door_enter_from_right': ((38, 30), (-3, 0.5), (32, 31)),
    # Rule 1, +y: p' = (32, 35) crosses y=34 at x*=31+1*(1/2)=31.5 in [29, 35] -> (32.0, 33.5).
    'door_edge_bottom': ((31, 33), (0.5, 1), (32.0, 33.5)),
    # Rule 1, -y: p' = (31, 25) crosses y=26 at x*=33-2*(1/2)=32 -> (32.5, 26.5).
    'door_edge_top': ((33, 27), (-1, -1), (32.5, 26.5)),
    # Rule 1 for a step from the left room through the door's corner: p' = (31, 36) crosses
    # y=34 at x*=27+4*(2/4)=29 (edge of [29, 35]) -> (29.5, 33.5).
    'door_edge_from_room': ((27, 32), (2, 2), (29.5, 33.5)),
    # Rule 1 comes before the barriers (reference order): p' = (29.5, 40) crosses x=29 at
    # y=20+20*(0.1/0.6)=23.33 (outside the hole) but also y=34 at x*=28.9+0.6*(14/20)=29.32
    # in [29, 35], so the door edge wins -> (29.82, 33.5).
    'door_edge_before_barrier': ((28.9, 20), (0.3, 10), (29.82, 33.5)),
    # Two barriers, d = (-3, -2): x=4 at t=2/3 (point (4, 3.67)), y=4 at t=1/2 (point
    # (4.5, 4)); the horizontal one is nearer -> bounce (4.5+0.5, 4+0.5).
    'corner_horizontal_nearer': ((6, 5), (-1.5, -1), (5.0, 4.5)),
    # d = (-2, -3): x=4 at t=1/2 (point (4, 4.5)), y=4 at t=2/3 -> vertical: (4.5, 5.0).
    'corner_vertical_nearer': ((5, 6), (-1, -1.5), (4.5, 5.0)),
    # Inner wall and top border, d = (3, -3): x=29 at t=2/3 (y=3), y=4 at t=1/3 (x=28)
    # -> horizontal: (28+0.5, 4+0.5).
    'corner_inner_and_top': ((27, 5), (1.5, -1.5), (28.5, 4.5)),
    # Exact corner (60, 60) at t=2/3 for both: tie -> the vertical barrier -> (59.5, 60.5),
    # then y >= 60 is clamped to 60-0.3.
    'corner_tie': ((58, 58), (1.5, 1.5), (59.5, 59.7)),
    # Clamp: x=60 hit at y=59.8 -> bounce (59.5, 60.3) -> y clamped to 59.7.
    'clamp_y': ((59, 59.8), (1, 0), (59.5, 59.7)),
    # Clamp into the left room: y=4 hit at t=1/2, x=28.7 -> bounce (29.2, 4.5) -> x >= 29 is
    # clamped to 29-0.3.
    'clamp_x_inner': ((28.6, 5), (0.1, -1), (28.7, 4.5)),
    'zero_action': ((20, 30), (0, 0), (20, 30)),
    'zero_action_in_door': ((30, 30), (0, 0), (30, 30)),
    # A step along a wall line (dx = 0) never crosses it: free move.
    'parallel_on_inner_line': ((29, 30), (0, 1), (29, 32)),
    'parallel_near_border': ((4.5, 20), (0, -3), (4.5, 14)),
}


@pytest.mark.parametrize('name', sorted(CASES))
def test_transition_hand_worked(name):
  s, a, expected = CASES[name]
  np.testing.assert_allclose(step(s, a), expected, atol=1e-4)


def _in_wall_or_outside(pos):
  x, y = pos[..., 0], pos[..., 1]
  in_band = ((x > wall.WALL_LEFT) & (x < wall.WALL_RIGHT)
             & ((y < wall.DOOR_LOW) | (y > wall.DOOR_HIGH)))
  outside = ((x <= wall.BORDER_LOW) | (x >= wall.BORDER_HIGH)
             | (y <= wall.BORDER_LOW) | (y >= wall.BORDER_HIGH))
  return in_band | outside


def test_transition_never_enters_wall_or_leaves_grid():
  rng = np.random.default_rng(0)
  n = 20_000
  # Valid states: either room, or the door corridor.
  room = rng.integers(0, 3, n)
  x = np.where(room == 0, rng.uniform(4.01, 28.99, n),
               np.where(room == 1, rng.uniform(35.01, 59.99, n), rng.uniform(29, 35, n)))
  y = np.where(room == 2, rng.uniform(26, 34, n), rng.uniform(4.01, 59.99, n))
  s = np.stack([x, y], -1).astype(np.float32)
  # Mix of small, large and axis-parallel actions.
  a = rng.normal(size=(n, 2)) * rng.choice([0.5, 2.0, 8.0], size=(n, 1))
  a[: n // 10, 0] = 0
  a[n // 10: n // 5, 1] = 0
  s_next = np.asarray(jax.jit(wall.transition)(s, a.astype(np.float32)))
  assert not _in_wall_or_outside(s).any()
  assert np.isfinite(s_next).all()
  assert not _in_wall_or_outside(s_next).any()
  # Also along long closed-loop random walks (reachable states).
  starts, acts = _walks(jax.random.key(1), 0.5)
  paths = np.asarray(_rollouts(starts, 3.0 * acts))   # larger steps than the data
  assert not _in_wall_or_outside(paths).any()


def test_transition_batched_broadcast_and_bad_input():
  s = jnp.array([[10.0, 10.0], [5.0, 20.0]])
  np.testing.assert_allclose(_transition(s, jnp.array([1.0, 1.5])), [[12, 13], [7, 23]])
  with pytest.raises(ValueError, match='pos must have shape'):
    wall.transition(jnp.zeros(3), jnp.zeros(2))
  with pytest.raises(ValueError, match='rollout takes'):
    wall.rollout(jnp.zeros((2, 2)), jnp.zeros((5, 2)))


def test_rollout_and_success():
  acts = jnp.array([[1.0, 1.5], [0.0, 0.0], [-1.0, 0.0]])
  path = np.asarray(wall.rollout(jnp.array([10.0, 10.0]), acts))
  # (10,10) -> (12,13) -> (12,13) -> (10,13)
  np.testing.assert_allclose(path, [[10, 10], [12, 13], [12, 13], [10, 13]], atol=1e-5)
  assert bool(wall.is_success(jnp.array([10.0, 10.0]), jnp.array([13.0, 13.0])))       # 4.24
  assert not bool(wall.is_success(jnp.array([10.0, 10.0]), jnp.array([10.0, 14.5])))   # 4.5
  assert wall.GRID_SIZE == 65 and wall.SUCCESS_RADIUS == 4.5 and wall.EPISODE_STEPS == 30


def test_render_pixels():
  img = np.asarray(wall.render(jnp.array([20.0, 40.0]), 65))
  assert img.shape == (65, 65, 3) and img.dtype == np.uint8
  np.testing.assert_array_equal(img[40, 20], [255, 0, 0])          # dot centre [row, col]
  # One pixel to the right: exp(-1/(2*1.7^2)) = exp(-0.17301) = 0.84113; uint8(214.49) = 214.
  np.testing.assert_array_equal(img[40, 21], [255, 41, 41])
  wall_pixels = [(10, 29), (10, 32), (40, 35), (25, 30), (35, 34), (4, 50), (60, 10), (50, 4),
                 (12, 60)]
  for r, c in wall_pixels:
    np.testing.assert_array_equal(img[r, c], [0, 0, 0], err_msg=f'wall pixel {(r, c)}')
  for r, c in [(30, 32), (26, 29), (34, 35), (10, 10), (2, 2), (50, 50)]:
    np.testing.assert_array_equal(img[r, c], [255, 255, 255], err_msg=f'free pixel {(r, c)}')
  # Off-grid centre: the two nearest pixels tie at the maximum, so both are pure red.
  img = np.asarray(wall.render(jnp.array([20.5, 40.0]), 65))
  np.testing.assert_array_equal(img[40, 20:22], [[255, 0, 0], [255, 0, 0]])
  # A dot over the wall is hidden.
  img = np.asarray(wall.render(jnp.array([32.0, 10.0]), 65))
  np.testing.assert_array_equal(img[10, 32], [0, 0, 0])


@pytest.mark.parametrize('size', [224, 48])
def test_render_resize_matches_torch_bilinear(size):
  torch = pytest.importorskip('torch')
  pos = jnp.array([17.3, 45.6])
  small = np.asarray(wall.render(pos, 65)).astype(np.float32)
  ref = torch.nn.functional.interpolate(
      torch.from_numpy(small).permute(2, 0, 1)[None], size=(size, size), mode='bilinear',
      align_corners=False, antialias=False)[0].permute(1, 2, 0).numpy()
  ref = np.clip(np.round(ref), 0, 255)
  out = np.asarray(wall.render(pos, size))
  assert out.shape == (size, size, 3) and out.dtype == np.uint8
  assert np.abs(out.astype(np.int32) - ref).max() <= 1
  with pytest.raises(ValueError, match='render size'):
    wall.render(pos, 0)


def test_sample_start_goal_opposite_rooms():
  start, goal = jax.vmap(wall.sample_start_goal)(jax.random.split(jax.random.key(0), 4000))
  start, goal = np.asarray(start), np.asarray(goal)
  left = (start[:, 0] >= 7.4) & (start[:, 0] <= 25.6)
  right = (start[:, 0] >= 38.4) & (start[:, 0] <= 56.6)
  assert (left | right).all()
  goal_left = (goal[:, 0] >= 7.4) & (goal[:, 0] <= 25.6)
  goal_right = (goal[:, 0] >= 38.4) & (goal[:, 0] <= 56.6)
  assert (goal_left == right).all() and (goal_right == left).all()
  for v in (start[:, 1], goal[:, 1]):
    assert ((v >= 7.4) & (v <= 56.6)).all()
  assert 0.45 < left.mean() < 0.55          # the swap happens half the time
  # Start and goal are never already a success.
  assert not np.asarray(wall.is_success(start, goal)).any()


def test_jit_vmap_match_unbatched_over_1000_episodes():
  keys = jax.random.split(jax.random.key(3), 1000)
  starts, goals = jax.jit(jax.vmap(wall.sample_start_goal))(keys)
  actions = jax.random.normal(jax.random.key(4), (1000, 8, 2)) * 1.5
  paths = jax.jit(jax.vmap(wall.rollout))(starts, actions)
  images = jax.jit(jax.vmap(lambda p: wall.render(p, 32)))(paths[:, -1])
  success = jax.jit(jax.vmap(wall.is_success))(paths[:, -1], goals)
  # Unbatched reference: lax.map applies the single-episode functions one episode at a time.
  def one_episode(inputs):
    key, acts = inputs
    s, g = wall.sample_start_goal(key)
    path = wall.rollout(s, acts)
    return s, g, path, wall.render(path[-1], 32), wall.is_success(path[-1], g)

  ref = jax.jit(lambda k, a: jax.lax.map(one_episode, (k, a)))(keys, actions)
  # Batched and sequential programs may fuse ops differently: equal up to float32 rounding.
  for got, want in zip((starts, goals, paths), ref[:3]):
    np.testing.assert_allclose(got, want, atol=1e-5)
  assert np.abs(np.asarray(images, np.int32) - np.asarray(ref[3], np.int32)).max() <= 1
  np.testing.assert_array_equal(success, ref[4])
  for i in range(2):   # eager (un-jitted) calls too
    np.testing.assert_allclose(wall.rollout(starts[i], actions[i]), paths[i], atol=1e-5)
    np.testing.assert_array_equal(wall.render(paths[i, -1], 32), images[i])
    assert bool(wall.is_success(paths[i, -1], goals[i])) == bool(success[i])


@pytest.mark.parametrize('kappa', [0.5, 2.0, 8.0, 40.0])
def test_von_mises_matches_closed_form(kappa):
  n = 200_000
  theta = np.asarray(wall.sample_von_mises(jax.random.key(5), kappa, (n,)), np.float64)
  assert np.abs(theta).max() <= np.float32(np.pi)
  # Mean resultant length E[cos theta] = I1(kappa) / I0(kappa); E[sin theta] = 0.
  expected = scipy.special.ive(1, kappa) / scipy.special.ive(0, kappa)
  assert abs(np.cos(theta).mean() - expected) < 4e-3
  assert abs(np.sin(theta).mean()) < 4e-3
  ks = scipy.stats.kstest(theta[:20_000], scipy.stats.vonmises(kappa).cdf)
  assert ks.pvalue > 1e-3
  with pytest.raises(ValueError, match='kappa'):
    wall.sample_von_mises(jax.random.key(0), 0.0)


def test_random_start_in_rooms():
  pos = np.asarray(jax.vmap(wall.random_start)(jax.random.split(jax.random.key(6), 2000)))
  left = (pos[:, 0] >= 5) & (pos[:, 0] <= 28)
  right = (pos[:, 0] >= 36) & (pos[:, 0] <= 59)
  assert (left | right).all() and 0.45 < left.mean() < 0.55
  assert ((pos[:, 1] >= 5) & (pos[:, 1] <= 59)).all()


def test_random_walk_actions():
  def walks(prob):
    starts, acts = _walks(jax.random.key(7), prob)
    side = np.sign(np.asarray(_rollouts(starts, acts))[..., 0] - wall.WALL_CENTRE)
    return np.asarray(acts), (side != side[:, :1]).any(1).mean()

  acts, crossed_biased = walks(1.0)
  assert acts.shape == (NUM_WALKS, WALK_STEPS, 2) and acts.dtype == np.float32
  length = np.linalg.norm(acts, axis=-1)
  assert length.min() >= 0.2 - 1e-5 and length.max() <= 1.8 + 1e-5
  # Truncated normal symmetric about the mean 1.0: the mean is 1.0; its std is
  # 0.4 * sqrt(1 - 2*2*phi(2)/(Phi(2)-Phi(-2))) = 0.4 * 0.8796 = 0.352.
  assert abs(length.mean() - 1.0) < 0.01
  assert abs(length.std() - 0.352) < 0.01
  _, crossed_plain = walks(0.0)
  assert crossed_biased > 0.9 and crossed_plain < 0.4
  with pytest.raises(ValueError, match='door_bias_prob'):
    wall.random_walk_actions(jax.random.key(0), 5, jnp.array([10.0, 10.0]), door_bias_prob=2.0)
