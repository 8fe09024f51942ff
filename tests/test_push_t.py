"""Push-T: the JAX solver against pymunk (the reference's engine), invariants, success, render.

The pymunk scene is built here from the spec (docs/reference.md §7, the reference's
pusht_env.py): damping 0, walls as radius-2 segments at 5 and 506, a kinematic disc of radius 15
driven by the PD law, the T of two boxes with mass 1, moment 2 x moment_for_poly(bar), centre of
gravity midway between the boxes' centroids, friction 0 (pymunk's default on shapes). Its whole
state (the block's velocity, Chipmunk's bias velocity and the contacts' accumulated impulses) is
read from pymunk's internals, so both simulators can step from the same full state.
"""

import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jepa_jax import envs
from jepa_jax.envs import push_t
from jepa_jax.planning import cem
from jepa_jax.planning.oracle import oracle_agent

pymunk = pytest.importorskip('pymunk')
from pymunk._chipmunk_cffi import lib as chipmunk  # pylint: disable=g-import-not-at-top

ENV = push_t.ENV
BAR = [(-60, 30), (60, 30), (60, 0), (-60, 0)]      # the reference's vertices
STEM = [(-15, 30), (-15, 120), (15, 120), (15, 30)]
# The walls as the reference adds them; our wall order is x = 5, y = 5, x = 506, y = 506.
WALLS = [((5, 506), (5, 5)), ((5, 5), (506, 5)), ((506, 5), (506, 506)), ((5, 506), (506, 506))]
STEPS = 10                                          # env steps per compared trajectory
rollout = jax.jit(ENV.rollout)
start_goal = jax.jit(jax.vmap(ENV.sample_start_goal))


def rot(angle):
  return np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])


class PymunkPushT:
  """The reference's scene in pymunk, set from its 7 numbers with the block at rest."""

  def __init__(self, obs):
    self.space = space = pymunk.Space()
    space.gravity = (0, 0)
    space.damping = 0.0
    self.walls = [pymunk.Segment(space.static_body, a, b, 2) for a, b in WALLS]
    space.add(*self.walls)
    self.agent = pymunk.Body(body_type=pymunk.Body.KINEMATIC)
    self.disc = pymunk.Circle(self.agent, 15)
    space.add(self.agent, self.disc)
    self.block = block = pymunk.Body(1, 2 * pymunk.moment_for_poly(1, BAR))
    self.boxes = [pymunk.Poly(block, BAR), pymunk.Poly(block, STEM)]
    block.center_of_gravity = tuple(
        (np.array(self.boxes[0].center_of_gravity) + np.array(self.boxes[1].center_of_gravity)) / 2)
    space.add(block, *self.boxes)
    obs = [float(x) for x in obs]
    self.agent.velocity, self.agent.position = tuple(obs[5:7]), tuple(obs[:2])
    block.angle = obs[4]                     # the reference sets the angle first
    block.position = tuple(obs[2:4])

  def observe(self):
    """float64 (7,): the reference's observation."""
    return np.array([*self.agent.position, *self.block.position, self.block.angle % (2 * math.pi),
                     *self.agent.velocity])

  def step(self, action):
    """One env step as the reference's (10 x PD update + space.step(0.01)); returns whether the
    pusher touched the block in any substep."""
    target = np.array(self.agent.position) + 100 * np.asarray(action, np.float64)
    touched = False
    for _ in range(10):
      accel = 100 * (target - np.array(self.agent.position)) - 20 * np.array(self.agent.velocity)
      self.agent.velocity = tuple(np.array(self.agent.velocity) + accel * 0.01)
      self.space.step(0.01)
      arbiters = []
      self.block.each_arbiter(arbiters.append)
      touched |= any(self.disc in arbiter.shapes for arbiter in arbiters)
    return touched

  def full_state(self):
    """float64 (push_t.STATE_DIM,) in push_t's layout, read from Chipmunk's structs: the bias
    velocity is the accumulated bias impulses of the last solve over the mass (Chipmunk zeroes it
    when it moves the body), the impulses those of the contacts found in the last step."""
    block, shapes = self.block, {shape._shape: shape for shape in self.space.shapes}
    stamp = chipmunk.cpSpaceGetTimestamp(self.space._space)
    bias_velocity, bias_spin = np.zeros(2), 0.0
    impulses = np.zeros(push_t.SCENE.num_contacts)
    for arbiter in self.space._get_arbiters():
      first, box = shapes[arbiter.a], shapes[arbiter.b]   # Chipmunk puts the polygon second
      if arbiter.stamp != stamp or box not in self.boxes:
        continue                             # a cached, not touching pair or the disc on a wall
      b = self.boxes.index(box)
      normal = np.array([arbiter.n.x, arbiter.n.y])         # from `first` to the block
      for contact in (arbiter.contacts[i] for i in range(arbiter.count)):
        r = np.array([contact.r2.x, contact.r2.y])          # from the centre of gravity
        bias_velocity += normal * contact.jBias / block.mass
        bias_spin += (r[0] * normal[1] - r[1] * normal[0]) * contact.jBias / block.moment
        if first is self.disc:
          slot = b
        else:                                 # the vertex of the box at the contact point
          local = rot(block.angle).T @ r + np.array(block.center_of_gravity)
          vertex = np.argmin(np.linalg.norm(np.array([BAR, STEM][b]) - local, axis=1))
          slot = 2 + (b * 4 + vertex) * 4 + self.walls.index(first)
        impulses[slot] = contact.jnAcc
    return np.array([*self.observe(), *block.velocity, block.angular_velocity, *bias_velocity,
                     bias_spin, *impulses])


def pymunk_rollout(obs, actions):
  """float64 (T + 1, 7) observations of pymunk from a block at rest."""
  scene = PymunkPushT(obs)
  observed = [np.asarray(obs, np.float64)]
  for action in actions:
    scene.step(action)
    observed.append(scene.observe())
  return np.stack(observed)


def ours(obs, actions):
  """Our (T + 1, 7) observations from the same start, float64."""
  start = push_t.from_reference_obs(jnp.asarray(obs, jnp.float32))
  return np.asarray(rollout(start, jnp.asarray(actions, jnp.float32))[:, :7], np.float64)


def wrap(angle):
  return (angle + np.pi) % (2 * np.pi) - np.pi


def t_geometry(state):
  """float64 numpy: signed distance from the agent centre to the T (< 0 inside) and the T's
  8 world corners (8, 2), from the reference's vertices."""
  angle = state[4]
  rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
  q = rot.T @ (np.asarray(state[:2], np.float64) - state[2:4])
  dists = []
  for box in (np.array(BAR, np.float64), np.array(STEM, np.float64)):
    d = np.abs(q - box.mean(0)) - (box.max(0) - box.min(0)) / 2
    dists.append(np.linalg.norm(np.maximum(d, 0)) + min(d.max(), 0))
  corners = np.concatenate([np.array(BAR), np.array(STEM)]) @ rot.T + state[2:4]
  return min(dists), corners


def push_scenario(rng):
  """A free-space push (float64 numpy, independent of the env's data policy): the block near the
  centre, the agent 25 px outside a random point of the T's outline, actions towards that
  point plus noise."""
  angle = rng.uniform(0, 2 * np.pi)
  block = rng.uniform(220, 290, 2)
  rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
  edge = rng.integers(len(push_t.T_OUTLINE))
  a, b = push_t.T_OUTLINE[edge], push_t.T_OUTLINE[(edge + 1) % len(push_t.T_OUTLINE)]
  tangent = (b - a) / np.linalg.norm(b - a)
  outward = np.array([tangent[1], -tangent[0]])
  point = a + rng.uniform(0.2, 0.8) * (b - a)
  contact, normal = block + rot @ point, rot @ outward
  agent = contact + normal * (15 + 10)
  heading = -normal
  actions = 0.25 * heading + rng.normal(0, 0.08, (STEPS, 2))
  return np.array([*agent, *block, angle, 0, 0]), actions


def test_registered_and_shapes():
  assert envs.get('push_t') is ENV and ENV.state_dim == push_t.STATE_DIM
  obs = jnp.array([100, 120, 250, 260, 0.5, 3, -4], jnp.float32)
  state = push_t.from_reference_obs(obs)
  assert ENV.step(state, jnp.zeros(2)).shape == (push_t.STATE_DIM,)
  assert ENV.proprio(state).shape == (4,)
  assert ENV.probe_targets(state).shape == (len(ENV.probe_target_names),)
  np.testing.assert_array_equal(ENV.proprio(state), np.asarray(obs)[[0, 1, 5, 6]])
  with pytest.raises(ValueError, match='from_reference_obs'):    # 7 numbers are not a state
    ENV.step(obs, jnp.zeros(2))
  with pytest.raises(ValueError, match='shape'):
    ENV.step(jnp.zeros(5), jnp.zeros(2))
  with pytest.raises(ValueError, match=r'shape \(7,\)'):
    push_t.from_reference_obs(state)


def test_reference_obs_round_trip_is_pymunk_at_rest():
  obs = np.array([100, 120, 250, 260, 0.5, 3, -4])
  state = push_t.from_reference_obs(obs)
  np.testing.assert_array_equal(push_t.reference_obs(state), obs.astype(np.float32))
  # pymunk's scene set from the 7 numbers, before any step: the block at rest, no contacts.
  np.testing.assert_allclose(state, PymunkPushT(obs).full_state(), atol=1e-4)


def test_probe_targets_read_the_block_at_its_centre_of_gravity():
  rng = np.random.default_rng(5)
  render = jax.jit(ENV.render, static_argnums=1)
  for _ in range(4):
    state = np.array([*rng.uniform(50, 450, 2), *rng.uniform(150, 350, 2),
                      rng.uniform(0, 2 * np.pi), 0, 0])
    block = PymunkPushT(state).block
    got = np.asarray(ENV.probe_targets(push_t.from_reference_obs(state)), np.float64)
    np.testing.assert_allclose(got[:2], block.local_to_world(block.center_of_gravity), atol=1e-3)
    np.testing.assert_allclose(got[2:], [math.cos(state[4]), math.sin(state[4]), *state[:2]],
                               atol=1e-4)
    # The visible T: the area centroid of its pixels lies 4.3 px from the centre of gravity
    # (the latter is the midpoint of the boxes' centroids), the body origin 40 px away.
    frame = np.asarray(render(push_t.from_reference_obs(state), 512), np.float64)
    slate = np.abs(frame - (119, 136, 153)).sum(-1) < 30   # LightSlateGray fill
    rows, cols = np.nonzero(slate)
    centroid = np.array([cols.mean(), rows.mean()])
    assert np.linalg.norm(centroid - got[:2]) < 7, (centroid, got[:2])
    assert np.linalg.norm(centroid - state[2:4]) > 30


def test_mass_properties_match_pymunk():
  bar, stem = pymunk.Poly(None, BAR), pymunk.Poly(None, STEM)
  np.testing.assert_allclose(push_t.T_MOMENT, 2 * pymunk.moment_for_poly(1, BAR))
  np.testing.assert_allclose(
      push_t.T_COG, (np.array(bar.center_of_gravity) + np.array(stem.center_of_gravity)) / 2)


@pytest.mark.parametrize('seed', range(4))
def test_free_pushes_match_pymunk(seed):
  """Block pose within 0.01 px and 1e-4 rad of pymunk over 10 env steps (100 substeps;
  measured 1.2e-4 px, 1.3e-6 rad)."""
  state, actions = push_scenario(np.random.default_rng(seed))
  got, want = ours(state, actions), pymunk_rollout(state, actions)
  moved = np.linalg.norm(want[-1, 2:4] - want[0, 2:4])
  assert moved > 10, f'scenario {seed} does not push the block (moved {moved:.1f} px)'
  np.testing.assert_allclose(got[:, :2], want[:, :2], atol=1e-2)   # agent: PD law only
  np.testing.assert_allclose(got[:, 5:], want[:, 5:], atol=1e-2)
  np.testing.assert_allclose(got[:, 2:4], want[:, 2:4], atol=1e-2)
  np.testing.assert_allclose(wrap(got[:, 4] - want[:, 4]), 0, atol=1e-4)


def test_slide_along_wall_matches_pymunk():
  """A diagonal push of the T against the bottom wall: it slides (zero friction) and turns."""
  state = np.array([190, 395, 256, 380, 0.0, 0, 0])          # stem tip 4 px above the wall
  actions = np.tile([0.3, 0.15], (STEPS, 1))
  got, want = ours(state, actions), pymunk_rollout(state, actions)
  assert want[-1, 2] - want[0, 2] > 20
  np.testing.assert_allclose(got[:, 2:4], want[:, 2:4], atol=1e-2)   # measured 9e-5 px
  np.testing.assert_allclose(wrap(got[:, 4] - want[:, 4]), 0, atol=1e-4)


def test_centred_push_translates_without_rotation():
  # Agent below the stem's tip on the symmetry axis (which holds the centre of gravity), pushing up.
  state = np.array([256, 460, 256, 300, 0.0, 0, 0])
  got = ours(state, np.tile([0.0, -0.3], (STEPS, 1)))
  assert got[0, 3] - got[-1, 3] > 30                       # moved up
  np.testing.assert_allclose(got[:, 2], 256, atol=1e-3)    # no sideways drift
  np.testing.assert_allclose(wrap(got[:, 4]), 0, atol=1e-4)


@pytest.mark.parametrize('side', [1.0, -1.0])
def test_off_centre_push_rotates_the_right_way(side):
  # Push the underside of the bar's wing at x = 45 side upwards (force (0, -f)).
  state = np.array([256 + 45 * side, 360, 256, 300, 0.0, 0, 0])
  got = ours(state, np.tile([0.0, -0.2], (STEPS, 1)))
  # Torque about the centre of gravity, float64: r x F with r = contact - cog, F = (0, -1).
  r = np.array([45 * side, 30 - push_t.T_COG[1]])
  torque_sign = np.sign(r[0] * -1.0 - r[1] * 0.0)
  turned = wrap(got[-1, 4] - got[0, 4])
  assert abs(turned) > 0.05 and np.sign(turned) == torque_sign


def test_no_deep_interpenetration_in_free_pushes():
  """While pushing in free space the disc stays within 3 px of the T's surface (quasi-static)."""
  rng = np.random.default_rng(7)
  for _ in range(3):
    state, actions = push_scenario(rng)
    got = ours(state, 2 * actions)                             # faster pushes
    depth = [15 - t_geometry(s)[0] for s in got]
    assert max(depth) < 3.0, depth


def pushing_episodes(num, steps, seed):
  """Pushes aimed at the block as the data policy makes them, simulated by pymunk (float64,
  independent of the env's policy code). The block is drawn from the reference's reset ranges
  (position in [100, 400]^2 with the T 40 px clear of the walls, any angle), the agent a few px
  outside a random point of the T's outline; each step drives through that point (fixed in the
  block frame, along the inward normal turned by N(0, 0.35) rad) with the data policy's gain
  0.5, speed limit 0.4 and N(0, 8) px target noise.

  Returns pymunk's full states (num, steps + 1, STATE_DIM), the actions (num, steps, 2) and
  whether the pusher touched the block during each step (num, steps)."""
  rng = np.random.default_rng(seed)
  states, actions, touched = [], [], []
  for _ in range(num):
    while True:
      angle, block = rng.uniform(0, 2 * np.pi), rng.uniform(100, 400, 2)
      corners = np.concatenate([BAR, STEM]) @ rot(angle).T + block
      if corners.min() > 45 and corners.max() < 466:
        break
    edge = rng.integers(len(push_t.T_OUTLINE))
    a, b = push_t.T_OUTLINE[edge], push_t.T_OUTLINE[(edge + 1) % len(push_t.T_OUTLINE)]
    outward = np.array([b[1] - a[1], a[0] - b[0]]) / np.linalg.norm(b - a)
    point = a + rng.uniform(0.1, 0.9) * (b - a)
    direction = rot(rng.normal(0, 0.35)) @ -outward
    agent = block + rot(angle) @ (point - direction * (15 + rng.uniform(3, 30)))
    scene = PymunkPushT([*agent, *block, angle, 0, 0])
    episode = [scene.full_state()]
    for _ in range(steps):
      obs = scene.observe()
      target = obs[2:4] + rot(obs[4]) @ (point + direction * 30) + rng.normal(0, 8, 2)
      action = 0.5 * (target - obs[:2]) / 100
      action *= min(1.0, 0.4 / np.linalg.norm(action))
      touched.append(scene.step(action))
      actions.append(action)
      episode.append(scene.full_state())
    states.append(episode)
  return np.array(states), np.array(actions).reshape(num, steps, 2), np.array(
      touched).reshape(num, steps)


@pytest.fixture(scope='module')
def pushes():
  return pushing_episodes(32, 20, seed=0)


def block_errors(got, want):
  """Block position (px) and wrapped angle (rad) errors of (..., >= 5) states, float64."""
  return (np.linalg.norm(got[..., 2:4] - want[..., 2:4], axis=-1),
          np.abs(wrap(got[..., 4] - want[..., 4])))


def test_one_step_from_the_full_state_matches_pymunk(pushes):
  """From pymunk's full state, one env step lands within 0.5 px and 0.01 rad of pymunk on
  >= 95 % of the steps where the pusher touches the block (measured 99.7 %; 98.7 % within
  0.01 px), with pymunk's block velocity. From the reference's 7 numbers alone (the block at
  rest, no warm start) only 10 % are within 0.01 px (median error 0.3 px)."""
  states, actions, touched = pushes
  start = jnp.asarray(states[:, :-1].reshape(-1, push_t.STATE_DIM), jnp.float32)
  want, touched = states[:, 1:].reshape(-1, push_t.STATE_DIM), touched.ravel()
  step = jax.jit(jax.vmap(ENV.step))
  got = np.asarray(step(start, jnp.asarray(actions.reshape(-1, 2), jnp.float32)), np.float64)
  assert touched.mean() > 0.8, touched.mean()
  position, angle = block_errors(got[touched], want[touched])
  assert np.mean((position <= 0.5) & (angle <= 0.01)) >= 0.95, np.percentile(position, [50, 95])
  assert np.mean(position <= 0.01) >= 0.9
  velocity = np.linalg.norm(got[touched, 7:9] - want[touched, 7:9], axis=-1)
  assert np.mean(velocity <= 1.0) >= 0.95, np.percentile(velocity, [50, 95])   # px/s
  at_rest = jax.vmap(push_t.from_reference_obs)(start[:, :7])
  got = np.asarray(step(at_rest, jnp.asarray(actions.reshape(-1, 2), jnp.float32)), np.float64)
  position, _ = block_errors(got[touched], want[touched])
  assert np.mean(position <= 0.01) < 0.5


def test_pushing_rollouts_match_pymunk(pushes):
  """20 env steps open loop from the same start at rest: the final block position is within
  3 px of pymunk's in the median episode (measured 0.00 px)."""
  states, actions, _ = pushes
  starts = jax.vmap(push_t.from_reference_obs)(jnp.asarray(states[:, 0, :7], jnp.float32))
  got = np.asarray(jax.jit(jax.vmap(ENV.rollout))(starts, jnp.asarray(actions, jnp.float32)),
                   np.float64)
  moved = np.linalg.norm(states[:, -1, 2:4] - states[:, 0, 2:4], axis=-1)
  assert np.median(moved) > 30, np.median(moved)
  position, angle = block_errors(got[:, -1], states[:, -1])
  assert np.median(position) <= 3.0 and np.median(angle) <= 0.01, (position, angle)


def state_with(agent=(100, 100), block=(200, 200), angle=0.0):
  return push_t.from_reference_obs(jnp.array([*agent, *block, angle, 0, 0], jnp.float32))


def test_success_edge_cases():
  goal = state_with()
  success = lambda s: bool(ENV.is_success(s, goal))
  assert success(goal)
  assert not success(state_with(agent=(112, 100), block=(216, 200)))       # |(12, 16)| = 20
  assert success(state_with(agent=(111.9, 100), block=(215.9, 200)))
  assert not success(state_with(block=(220.5, 200)))
  assert success(state_with(angle=np.pi / 9 - 1e-3))
  assert not success(state_with(angle=np.pi / 9 + 1e-3))
  # Angle wrapping: 0.05 vs 2 pi - 0.05 differ by 0.1 rad.
  assert bool(ENV.is_success(state_with(angle=0.05), state_with(angle=2 * np.pi - 0.05)))
  np.testing.assert_allclose(ENV.distance(state_with(agent=(103, 104)), goal), 5.0, rtol=1e-6)
  # The agent velocity plays no part.
  moving = jnp.asarray(goal).at[5:].set(50.0)
  assert success(moving) and float(ENV.distance(moving, goal)) == 0.0


def test_oracle_cost_orders_by_error():
  goal = state_with()
  cost = lambda s: float(ENV.oracle_cost(s, goal))
  assert cost(goal) == 0.0
  assert cost(state_with(block=(210, 200))) < cost(state_with(block=(230, 200)))
  assert cost(state_with(angle=0.1)) < cost(state_with(angle=0.5))
  np.testing.assert_allclose(cost(state_with(angle=2 * np.pi - 0.1)), cost(state_with(angle=0.1)),
                             rtol=1e-4)


def reference_canvas(state):
  """The reference's drawing with pygame (its DrawOptions re-derived): goal, block, agent, walls."""
  os.environ.setdefault('SDL_VIDEODRIVER', 'dummy')
  pygame = pytest.importorskip('pygame')
  scene = PymunkPushT(state)
  space, agent, block = scene.space, scene.agent, scene.block
  space.step(0.01)  # as the reference's reset: updates the shapes' poses
  light = lambda c: tuple(int(min(1.2 * x, 255)) for x in c[:3])
  rnd = lambda p: (round(p[0]), round(p[1]))
  canvas = pygame.Surface((512, 512))
  canvas.fill((255, 255, 255))

  def fat_segment(a, b, radius, colour):
    p1, p2 = rnd(a), rnd(b)
    pygame.draw.lines(canvas, colour, False, [p1, p2], round(max(1, radius * 2)))
    o = [abs(p2[1] - p1[1]), abs(p2[0] - p1[0])]
    scale = radius / (o[0] ** 2 + o[1] ** 2) ** 0.5
    o = [round(o[0] * scale), round(o[1] * scale)]
    pygame.draw.polygon(canvas, colour, [(p1[0] - o[0], p1[1] - o[1]), (p1[0] + o[0], p1[1] + o[1]),
                                         (p2[0] + o[0], p2[1] + o[1]), (p2[0] - o[0], p2[1] - o[1])])
    pygame.draw.circle(canvas, colour, p1, round(radius))
    pygame.draw.circle(canvas, colour, p2, round(radius))

  gx, gy, ga = push_t.GOAL_POSE
  for shape in block.shapes:
    pts = [rnd((gx + math.cos(ga) * x - math.sin(ga) * y, gy + math.sin(ga) * x + math.cos(ga) * y))
           for x, y in shape.get_vertices()]
    pygame.draw.polygon(canvas, pygame.Color('LightGreen'), pts + pts[:1])
  slate = tuple(pygame.Color('LightSlateGray'))[:3]
  for shape in block.shapes:
    verts = [block.local_to_world(v) for v in shape.get_vertices()]
    pygame.draw.polygon(canvas, light(slate), [rnd(v) for v in verts + verts[:1]])
    for i in range(len(verts)):
      fat_segment(verts[i], verts[(i + 1) % len(verts)], 2, slate)
  blue = tuple(pygame.Color('RoyalBlue'))[:3]
  pygame.draw.circle(canvas, blue, rnd(agent.position), 15)
  pygame.draw.circle(canvas, light(blue), rnd(agent.position), 11)
  for shape in space.shapes:
    if isinstance(shape, pymunk.Segment):
      fat_segment(shape.a, shape.b, 2, tuple(pygame.Color('LightGray'))[:3])
  return np.transpose(pygame.surfarray.array3d(canvas), (1, 0, 2))


def test_render_matches_pygame_drawing():
  state = np.array([200, 150, 300, 330, 0.7, 0, 0])
  want = reference_canvas(state)
  got = np.asarray(jax.jit(ENV.render, static_argnums=1)(push_t.from_reference_obs(state), 512))
  assert got.shape == (512, 512, 3) and got.dtype == np.uint8
  same = np.all(got == want, -1)
  assert same.mean() > 0.99, same.mean()                  # differences: edge pixels only
  # Resized frames: ours rasterises the 2 x 2 source taps directly; it must equal resizing the
  # full canvas (bilinear, half-pixel centres, no antialiasing: OpenCV's INTER_LINEAR).
  small = np.asarray(ENV.render(push_t.from_reference_obs(state), 224), np.float64)
  resized = jax.image.resize(jnp.asarray(got, jnp.float32), (224, 224, 3), 'bilinear',
                             antialias=False)
  np.testing.assert_allclose(small, np.asarray(resized), atol=1.0)


def test_random_state_and_goals():
  keys = jax.random.split(jax.random.PRNGKey(3), 8)
  for start in np.asarray(jax.jit(jax.vmap(ENV.random_state))(keys), np.float64):
    clearance, corners = t_geometry(start)
    assert clearance > 15                                   # the agent does not touch the T
    assert corners.min() > 7 and corners.max() < 504       # the T is inside the walls
    np.testing.assert_array_equal(start[5:], 0)
  starts, goals = (np.asarray(x) for x in start_goal(keys))
  block_moved = np.linalg.norm(goals[:, 2:4] - starts[:, 2:4], axis=1) > 5
  assert block_moved.mean() > 0.5                          # most goals need the block moved
  assert not np.allclose(starts, np.asarray(jax.vmap(ENV.random_state)(keys)))  # segment starts



def test_data_policy_moves_the_block_at_the_reference_speed():
  """The reference dataset's precomputed statistics (pusht_dset.py): action std 0.20 per axis,
  agent velocity std 75 px/s. Most steps move or rotate the block."""
  keys = jax.random.split(jax.random.PRNGKey(11), 16)
  actions, states = (np.asarray(x, np.float64) for x in
                     jax.jit(jax.vmap(lambda k: ENV.collect_trajectory(k, 60)))(keys))
  assert np.all((actions.reshape(-1, 2).std(0) > 0.14) & (actions.reshape(-1, 2).std(0) < 0.3))
  velocity_std = states[..., 5:7].reshape(-1, 2).std(0)
  assert np.all((velocity_std > 50) & (velocity_std < 110)), velocity_std
  moved = np.linalg.norm(np.diff(states[..., 2:4], axis=1), axis=-1) > 0.5
  rotated = np.abs(wrap(np.diff(states[..., 4], axis=1))) > np.radians(0.5)
  assert (moved | rotated).mean() > 0.45

@pytest.mark.slow
def test_oracle_cem_beats_doing_nothing():
  """Small in-test budget; the full measurement (300 x 30) is in the report."""
  agent = oracle_agent(ENV)
  config = cem.CEMConfig(num_samples=128, num_iters=6, num_elites=10, horizon=6)
  starts, goals = start_goal(jax.random.split(jax.random.PRNGKey(3), 8))

  def episode(start, goal, key):
    plan, _ = cem.cem_plan(lambda s, g, a: agent.cost_fn(None, s, g, a), start, goal,
                           agent.action_dim, key, config)
    final = ENV.rollout(start, agent.to_env_actions(plan))[-1]
    return ENV.oracle_cost(final, goal), ENV.oracle_cost(start, goal)

  planned, idle = jax.jit(jax.vmap(episode))(starts[:2], goals[:2], jax.random.split(
      jax.random.PRNGKey(5), 2))
  assert np.all(np.asarray(planned) < 0.5 * np.asarray(idle)), (planned, idle)
