"""Tests of the PointMaze environment against CPU MuJoCo, numpy re-derivations and the maze map.

MuJoCo (`pip install mujoco`) is a test-only dependency: the dynamics tests simulate the
reference's MJCF model with it and compare every env step; the rendering test compares with
MuJoCo's own OpenGL renderer when an offscreen GL context can be made (skipped otherwise).
"""

import math
import os

# MuJoCo picks its OpenGL backend when first imported: headless EGL unless the user chose one.
os.environ.setdefault('MUJOCO_GL', 'egl')

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from jepa_jax import envs
from jepa_jax.envs import point_maze as pm
from jepa_jax.planning import cem

ENV = pm.ENV
NUM_TRAJ, TRAJ_STEPS = 16, 100
MAZE = ('#####', '#GOO#', '###O#', '#OOO#', '#####')   # the reference's U_MAZE, row = x cell


@jax.jit
def _random_rollouts(key):
  """NUM_TRAJ data-policy trajectories: (states (N, T + 1, 4), actions (N, T, 2))."""
  keys = jax.random.split(key, NUM_TRAJ)
  actions, states = jax.vmap(lambda k: ENV.collect_trajectory(k, TRAJ_STEPS))(keys)
  return states, actions


def _mujoco():
  mujoco = pytest.importorskip('mujoco')
  model = mujoco.MjModel.from_xml_string(pm.mjcf_xml())
  return mujoco, model, mujoco.MjData(model)


def _mujoco_env_step(mujoco, model, data, state, action):
  """The reference's MazeEnv.step: clip action and velocity, then frame_skip = 5 mj_steps."""
  data.qpos[:] = state[:2]
  data.qvel[:] = np.clip(state[2:], -5.0, 5.0)
  data.ctrl[:] = np.clip(action, -1.0, 1.0)
  touching = False
  for _ in range(5):
    mujoco.mj_step(model, data)
    touching |= data.ncon > 1       # contact 0 is the (inert) floor under the ball
  return np.concatenate([data.qpos, data.qvel]), touching


def _wall_boxes():
  """(W, 2) wall-box centres in state coordinates, from the maze string (world (i+1, j+1),
  the ball's body at world (1.2, 1.2))."""
  return np.array([(i - 0.2, j - 0.2) for i, row in enumerate(MAZE)
                   for j, c in enumerate(row) if c == '#'])


def _gap_to_walls(xy):
  """(...,) distance from points (..., 2) to the nearest wall box (0 inside a box)."""
  excess = np.abs(xy[..., None, :] - _wall_boxes()) - 0.5
  return np.linalg.norm(np.maximum(excess, 0.0), axis=-1).min(-1)


def test_mjcf_is_the_reference_model():
  mujoco, model, _ = _mujoco()
  assert model.opt.timestep == 0.01 and model.opt.integrator == mujoco.mjtIntegrator.mjINT_EULER
  np.testing.assert_array_equal(model.dof_damping, [1.0, 1.0])
  np.testing.assert_array_equal(model.actuator_gear[:, 0], [100.0, 100.0])
  np.testing.assert_array_equal(model.actuator_ctrlrange, [[-1, 1], [-1, 1]])
  np.testing.assert_allclose(model.body_mass[1], 1000 * 4 / 3 * math.pi * 0.1 ** 3)
  np.testing.assert_array_equal(model.body_pos[1], [1.2, 1.2, 0.0])
  boxes = model.geom_type == mujoco.mjtGeom.mjGEOM_BOX
  np.testing.assert_array_equal(model.geom_margin, np.full(model.ngeom, 0.002))
  walls = {tuple(p) for p in model.geom_pos[boxes][:, :2]}
  assert walls == {(i + 1.0, j + 1.0) for i, row in enumerate(MAZE)
                   for j, c in enumerate(row) if c == '#'}
  np.testing.assert_array_equal(model.geom_size[boxes], np.tile([0.5, 0.5, 0.2], (18, 1)))


def test_every_env_step_matches_mujoco():
  mujoco, model, data = _mujoco()
  states, actions = map(np.asarray, _random_rollouts(jax.random.PRNGKey(0)))
  errors, contacts = [], 0
  for traj, acts in zip(states.astype(np.float64), actions.astype(np.float64)):
    for t in range(TRAJ_STEPS):
      expected, touching = _mujoco_env_step(mujoco, model, data, traj[t], acts[t])
      errors.append(np.abs(expected - traj[t + 1]))
      contacts += touching
  errors = np.stack(errors)
  assert contacts >= 0.05 * len(errors), f'only {contacts} of {len(errors)} steps touch a wall'
  # float32 state: positions ~1e-7, velocities after a stiff contact ~1e-5 (measured 6e-7, 1.2e-5).
  assert errors[:, :2].max() < 5e-6, errors[:, :2].max()
  assert errors[:, 2:].max() < 2e-4, errors[:, 2:].max()


def test_free_running_episodes_match_mujoco():
  """One evaluation episode (30 env steps) simulated independently by both, contacts included.

  Longer free runs diverge at the contacts' on/off switch (MuJoCo itself moves by up to 0.4
  after 100 steps from a start perturbed by 1e-7), so the whole-trajectory check above is
  made step by step."""
  mujoco, model, data = _mujoco()
  states, actions = map(np.asarray, _random_rollouts(jax.random.PRNGKey(1)))
  steps = ENV.episode_steps
  worst = 0.0
  for traj, acts in zip(states.astype(np.float64), actions.astype(np.float64)):
    state = traj[0]
    for t in range(steps):
      state, _ = _mujoco_env_step(mujoco, model, data, state, acts[t])
      worst = max(worst, np.abs(state[:2] - traj[t + 1, :2]).max())
  assert worst < 5e-3, worst       # measured 6.6e-4 over 64 trajectories


def test_walls_are_never_crossed():
  states = [_random_rollouts(jax.random.PRNGKey(100 + i))[0] for i in range(16)]
  xy = np.asarray(jnp.stack(states))[..., :2].reshape(-1, 2).astype(np.float64)
  excess = np.abs(xy[:, None, :] - _wall_boxes()) - 0.5
  inside = (excess < 0).all(-1).any(-1)
  assert not inside.any(), xy[inside][:5]
  # Soft contacts let the surface sink in a little; the centre stays well clear of the boxes.
  assert _gap_to_walls(xy).min() > 0.05, _gap_to_walls(xy).min()


def test_free_space_boxes_are_where_the_ball_fits():
  boxes = np.asarray(pm.FREE_BOXES)
  grid = np.stack(np.meshgrid(np.linspace(0.3, 3.3, 301), np.linspace(0.3, 3.3, 301)), -1)
  grid = grid.reshape(-1, 2)
  in_boxes = ((grid[:, None, 0] >= boxes[:, 0] - 1e-9) & (grid[:, None, 0] <= boxes[:, 1] + 1e-9)
              & (grid[:, None, 1] >= boxes[:, 2] - 1e-9)
              & (grid[:, None, 1] <= boxes[:, 3] + 1e-9)).any(-1)
  fits = _gap_to_walls(grid) >= 0.1 - 1e-9
  assert not (in_boxes & ~fits).any()
  # Only the two small pockets at the middle wall's convex corners are left out.
  assert (fits & ~in_boxes).sum() <= 0.002 * fits.sum()


def test_velocity_is_clipped_and_damped_in_free_space():
  # Closed form away from walls with zero control: per physics step v <- v * m / (m + h*1),
  # after clipping the start velocity to +-5.
  state = jnp.array([0.8, 1.8, 7.0, -0.2], jnp.float32)
  nxt = np.asarray(jax.jit(ENV.step)(state, jnp.zeros(2)))
  factor = pm.MASS / (pm.MASS + 0.01)
  v = np.array([5.0, -0.2])
  x = np.array([0.8, 1.8])
  for _ in range(5):
    v = v * factor
    x = x + 0.01 * v
  np.testing.assert_allclose(nxt, np.concatenate([x, v]), rtol=1e-5, atol=1e-6)


def _project(x, y, size, height=0.0):
  """Pixel (col, row) of the state point (x, y, height): the reference's camera is a pinhole
  looking straight down from 9.7348 above the maze centre, world (3, 3), fovy 45 degrees."""
  focal = size / 2 / math.tan(math.radians(22.5))
  depth = 9.734846922834954 - height
  return (size / 2 + (x + 1.2 - 3.0) * focal / depth,
          size / 2 - (y + 1.2 - 3.0) * focal / depth)


@pytest.mark.parametrize('size', [64, 224])
def test_render_draws_ball_and_walls_where_they_are(size):
  positions = np.array([[0.8, 0.8], [2.9, 3.1], [1.8, 2.8], [0.45, 2.0]], np.float32)
  states = jnp.concatenate([positions, jnp.zeros((4, 2))], -1)
  frames = np.asarray(jax.jit(jax.vmap(lambda s: ENV.render(s, size)))(states)).astype(int)
  assert frames.shape == (4, size, size, 3)
  for frame, (x, y) in zip(frames, positions):
    green = (frame[..., 1] > frame[..., 0] + 40) & (frame[..., 1] > frame[..., 2] + 40)
    rows, cols = np.nonzero(green)
    col, row = _project(x, y, size)
    assert abs(cols.mean() + 0.5 - col) < 0.5 and abs(rows.mean() + 0.5 - row) < 0.5
    radius = 0.2 * size / 2 / math.tan(math.radians(22.5)) / 9.7348
    assert abs(green.sum() - math.pi * radius ** 2) < 0.35 * math.pi * radius ** 2 + 4
  # plot_extent maps the frame's edges to ball coordinates: the projection's inverse.
  left, right, bottom, top = ENV.plot_extent
  np.testing.assert_allclose(_project(left, top, size), (0, 0), atol=1e-9)
  np.testing.assert_allclose(_project(right, bottom, size), (size, size), atol=1e-9)
  # Cell centres (at the wall-top height): brown walls (R > G > B), blue-grey floor (B > R).
  frame = frames[0]
  for i, row_cells in enumerate(MAZE):
    for j, cell in enumerate(row_cells):
      col, row = _project(i - 0.2, j - 0.2, size, height=0.2)
      if not (0 <= col < size and 0 <= row < size) or (i, j) == (1, 1):   # (1, 1): the ball
        continue
      r, g, b = frame[int(row), int(col)]
      if cell == '#':
        assert r > g > b and r > 180, (i, j, r, g, b)
      else:
        assert b > r, (i, j, r, g, b)


def test_render_matches_mujoco_renderer():
  mujoco, model, data = _mujoco()
  try:
    renderer = mujoco.Renderer(model, 224, 224)
  except Exception as err:  # no offscreen OpenGL here
    pytest.skip(f'MuJoCo cannot render offscreen here: {err}')
  # mujoco-py's free camera: look-at = median geom position, distance = model extent, made on
  # the first render, which the reference's prepare_for_render does at this state.
  data.qpos[:] = [1.0856, 1.9746]
  mujoco.mj_forward(model, data)
  camera = mujoco.MjvCamera()
  camera.type = mujoco.mjtCamera.mjCAMERA_FREE
  camera.lookat[:] = np.median(data.geom_xpos, 0)
  camera.distance = model.stat.extent
  camera.azimuth, camera.elevation = 90, -90
  render = jax.jit(lambda state: ENV.render(state, 224))
  for xy in ([0.8, 0.8], [3.15, 0.45], [1.8, 2.8]):
    data.qpos[:] = xy
    mujoco.mj_forward(model, data)
    data.site_xpos[model.site('target_site').id] = [11, 11, 0]   # the reference's OFF_TARGET
    renderer.update_scene(data, camera)
    expected = renderer.render().astype(float)
    ours = np.asarray(render(jnp.array(xy + [0.0, 0.0]))).astype(float)
    assert np.abs(ours - expected).mean() < 1.0                        # measured 0.09
    assert (np.abs(ours - expected).max(-1) > 40).mean() < 0.002
  renderer.close()


def _hand_reference_draw(seed):
  """The reference's draw re-derived from one stream of RandomState doubles:
  uniform(a, b) = a + (b - a) * random_sample()."""
  stream = iter(np.random.RandomState(seed).random_sample(1000))
  states = []
  for _ in range(2):
    while True:
      x = 0.5 + 2.6 * next(stream)
      y = 0.5 + 2.6 * next(stream)
      arms = (x <= 1.1 or x >= 2.5) and 0.5 <= y <= 3.1 and 0.5 <= x <= 3.1
      if arms or (1.1 < x < 2.5 and 2.5 <= y <= 3.1):
        break
    vx = -5.2262554 + 2 * 5.2262554 * next(stream)
    vy = -5.2262554 + 2 * 5.2262554 * next(stream)
    states.append(np.array([x, y, vx, vy]))
  return states


@pytest.mark.parametrize('seed', [1, 2, 3, 7, 42, 96, 12345])
def test_reference_start_goal_reproduces_the_random_state_draws(seed):
  start, goal = ENV.reference_start_goal(seed)
  hand_start, hand_goal = _hand_reference_draw(seed)
  assert start.dtype == np.float64 and start.shape == (4,)
  np.testing.assert_array_equal(start, hand_start)
  np.testing.assert_array_equal(goal, hand_goal)


def _in_u_region(xy):
  x, y = xy[..., 0], xy[..., 1]
  arms = ((x <= 1.1) | (x >= 2.5)) & (x >= 0.5) & (x <= 3.1) & (y >= 0.5) & (y <= 3.1)
  return arms | ((x > 1.1) & (x < 2.5) & (y >= 2.5) & (y <= 3.1))


def test_sample_start_goal_has_the_reference_distribution():
  keys = jax.random.split(jax.random.PRNGKey(3), 4000)
  starts, goals = map(np.asarray, jax.jit(jax.vmap(ENV.sample_start_goal))(keys))
  draws = np.concatenate([starts, goals])
  assert _in_u_region(draws[:, :2]).all()
  reference = np.concatenate([np.stack(ENV.reference_start_goal(s)) for s in range(1, 1001)])
  for dim in range(4):
    p = scipy.stats.ks_2samp(draws[:, dim], reference[:, dim]).pvalue
    assert p > 1e-3, (dim, p)
  assert np.abs(draws[:, 2:]).max() <= 5.2262554 + 1e-6
  assert abs(np.corrcoef(starts[:, 0], goals[:, 0])[0, 1]) < 0.06    # independent draws


def test_random_state_and_data_policy():
  keys = jax.random.split(jax.random.PRNGKey(4), 2000)
  states = np.asarray(jax.jit(jax.vmap(ENV.random_state))(keys)).astype(np.float64)
  assert (_gap_to_walls(states[:, :2]) >= 0.1 - 1e-6).all()
  # Uniform over the free area: the bridge holds 1.2 * 0.8 of the 2 * 0.8 * 2.8 + 0.96 area.
  bridge = (states[:, 0] > 1.2) & (states[:, 0] < 2.4)
  assert abs(bridge.mean() - 0.96 / 5.44) < 0.03
  actions = np.asarray(ENV.collect_actions(jax.random.PRNGKey(5), jnp.zeros(4), 5000))
  assert actions.shape == (5000, 2) and actions.dtype == np.float32
  assert actions.min() >= -1 and actions.max() <= 1
  assert scipy.stats.kstest(actions.ravel(), 'uniform', args=(-1, 2)).pvalue > 1e-3
  with pytest.raises(ValueError, match='length'):
    ENV.collect_actions(jax.random.PRNGKey(0), jnp.zeros(4), 0)


def test_task_functions_and_protocol():
  assert envs.get('point_maze') is ENV
  assert (ENV.frameskip, ENV.episode_steps, ENV.state_dim, ENV.action_dim) == (5, 30, 4, 2)
  goal = jnp.array([1.0, 2.0, 3.0, -3.0])
  near = jnp.array([1.3, 2.39, 0.0, 0.0])       # xy distance 0.4920 (velocities ignored)
  far = jnp.array([1.3, 2.41, 0.0, 0.0])        # 0.5080
  assert bool(ENV.is_success(near, goal)) and not bool(ENV.is_success(far, goal))
  np.testing.assert_allclose(ENV.distance(near, goal), math.hypot(0.3, 0.39), rtol=1e-6)
  np.testing.assert_allclose(ENV.oracle_cost(near, goal), 0.3 ** 2 + 0.39 ** 2, rtol=1e-6)
  np.testing.assert_array_equal(ENV.probe_targets(near), near[:2])
  np.testing.assert_array_equal(ENV.proprio(near), near)
  with pytest.raises(ValueError, match='state'):
    ENV.step(jnp.zeros(2), jnp.zeros(2))
  with pytest.raises(ValueError, match='size'):
    ENV.render(jnp.zeros(4), 3.5)


@pytest.mark.slow   # ~10-50 s on 2 shared cores: 20 episodes x 3000 rollouts of 30 env steps
def test_oracle_cem_solves_reference_episodes():
  """CEM on the true dynamics, the reference protocol (one open-loop plan: horizon 6 model
  steps x frameskip 5 = the 30-step episode), a reduced budget (200 x 15 instead of 300 x 30);
  random actions as baseline."""
  horizon, frameskip = 6, ENV.frameskip
  config = cem.CEMConfig(num_samples=200, num_iters=15, num_elites=10, horizon=horizon,
                         action_low=-1.0, action_high=1.0, num_execute=horizon)

  def cost_fn(state, goal, plans):
    finals = jax.vmap(lambda p: ENV.rollout(state, p.reshape(-1, 2))[-1])(plans)
    return ENV.oracle_cost(finals, goal)

  def episode(start, goal, key):
    plan, _ = cem.cem_plan(cost_fn, start, goal, 2 * frameskip, key, config)
    final = ENV.rollout(start, plan.reshape(-1, 2))[-1]
    random_final = ENV.rollout(start, ENV.collect_actions(key, start, ENV.episode_steps))[-1]
    return ENV.is_success(final, goal), ENV.is_success(random_final, goal)

  draws = [ENV.reference_start_goal(1 + ep) for ep in range(20)]   # ep_seed = s*s + ep*s, s=1
  starts = jnp.asarray(np.stack([s for s, _ in draws]), jnp.float32)
  goals = jnp.asarray(np.stack([g for _, g in draws]), jnp.float32)
  keys = jax.random.split(jax.random.PRNGKey(0), len(draws))
  success, random_success = jax.jit(jax.vmap(episode))(starts, goals, keys)
  # Measured 0.95 here (key seed 0; seeds 1, 2: 0.95, 1.0); 150 x 15: 0.85-1.0; the full
  # 300 x 30 budget: 0.979 on the 96 reference episodes. The Euclidean cost's local minimum at
  # the U's middle wall is what a small budget sometimes fails to leave.
  assert np.mean(success) >= 0.9, np.asarray(success)
  # Random actions succeed on 4 of these 20 (2 goals lie within 0.5 of the start already).
  assert np.mean(random_success) <= 0.35, np.asarray(random_success)
