"""The Push-T environment of the reference (pymunk Push-T of DINO-WM), as pure float32 JAX.

A kinematic disc (the agent, radius 15) pushes a T-shaped block towards a fixed goal pose in a
512 x 512 workspace (docs/reference.md §7). Coordinates are pixels with x to the right and y
down (pygame's screen, no flip); angles are radians, positive from +x towards +y.

State f32 (STATE_DIM = 47,): the simulator's whole state, the reference's 7 numbers first.
  [0:7]   [agent_x, agent_y, block_x, block_y, block_angle, agent_vx, agent_vy]: the reference's
          observation (`reference_obs`); the block pose is pymunk's `block.position` (the T's
          local origin, the top middle of the bar) and angle, wrapped to [0, 2 pi).
  [7:10]  the block's velocity (of its centre of gravity, px/s) and angular velocity (rad/s):
          pymunk's `block.velocity`, `block.angular_velocity` (BLOCK_VELOCITY, BLOCK_SPIN);
  [10:13] its bias velocity and spin, the penetration correction of the last solve (Chipmunk's
          `v_bias`, `w_bias`, not exposed by pymunk; BIAS_VELOCITY, BIAS_SPIN);
  [13:47] the accumulated normal impulse of each contact slot (`rigid2d.Scene.num_contacts`:
          the disc against the bar and the stem, then each (box, vertex, wall)), the warm start
          of the next solve (IMPULSES).
With damping 0 the block restarts every physics step from rest: the carried velocities only
move it once, at the start of the next step (pymunk integrates positions before solving), and
the impulses only start the next solve. They are still pymunk's state: dropping them (a 7-number
state) puts the block one substep of motion behind pymunk after every env step and restarts the
warm start. `from_reference_obs(obs)` makes the full state of a block at rest (as the
reference's reset leaves it), `reference_obs(state)` reads the 7 numbers back. proprio = agent
position and velocity (4,).

Dynamics (`step`, one env step = 10 substeps of 0.01 s): the action a (2,) sets the target
`agent_pos + 100 a`; each substep a PD law updates the agent velocity
`v += (100 (target - p) - 20 v) dt`, then `rigid2d.substep` runs pymunk's `space.step(dt)`: the
agent moves by `v dt`, the block by its carried velocity, then the contacts are solved. The
block weighs 1, its moment of inertia is twice the bar's `moment_for_poly` (the reference
computes the stem's from the bar's vertices too), its centre of gravity lies midway between the
two boxes' centroids; friction is 0 everywhere (the reference's `body.friction = 1` is an
attribute pymunk ignores).

Measured against pymunk 7.3 stepping from the same full state (tests/test_push_t.py: pushes
aimed at the block at the data policy's speed, from the reference's reset ranges): one env step
lands within 0.5 px and 0.01 rad of pymunk on 99-99.7 % of the steps where the pusher touches
the block (the former 7-number state: 70 %), within 0.01 px on 98.7 %; 20-step open-loop
pushes end within 0.001 px of pymunk in the median episode (7-number state: 0.6 px). Every miss
has the block against a wall: there pymunk's order of solving the contacts (set by its
bounding-box tree's history) changes the result and ours does not follow it (rigid2d's
docstring). Pushing twice as fast (the block moves 14 px per step; 27 % of the touching steps
at a wall), 94.8 % of the touching steps match (7-number state: 22 %), all of those away from
walls.

The reference's reset runs one physics step after setting the state; starts from `random_state`
are at rest and clear of the block, where that step changes nothing, so it is not modelled.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np

from jepa_jax.envs import base, rigid2d

WORKSPACE = 512
WALL_LINE_LOW, WALL_LINE_HIGH, WALL_RADIUS = 5.0, 506.0, 2.0   # pymunk segments of radius 2
AGENT_RADIUS = 15.0
ACTION_SCALE = 100.0          # relative action: target = agent_pos + 100 * action
SUBSTEPS, DT = 10, 0.01       # sim_hz 100, control_hz 10
K_P, K_V = 100.0, 20.0        # PD gains of the agent's velocity controller
T_SCALE = 30.0                # bar 4 x 1 scales, stem 1 x 3 scales
GOAL_POSE = (256.0, 256.0, math.pi / 4)
SUCCESS_POSITION, SUCCESS_ANGLE = 20.0, math.pi / 9
FRAMESKIP = 5
GOAL_OFFSET_STEPS = 25               # goals: the state 25 data-policy steps ahead (LeWM)
EPISODE_STEPS = 2 * GOAL_OFFSET_STEPS   # LeWM's eval budget: twice the goal offset
SEGMENT_START_STEPS = 25             # episode starts: 25 data-policy steps into a trajectory

# The T in its body frame (y down): bar x in [-60, 60], y in [0, 30]; stem x in [-15, 15],
# y in [30, 120]. Corners in the reference's order.
BAR = np.array([[-2, 1], [2, 1], [2, 0], [-2, 0]], np.float64) * T_SCALE
STEM = np.array([[-0.5, 1], [-0.5, 4], [0.5, 4], [0.5, 1]], np.float64) * T_SCALE
T_MASS = 1.0
T_MOMENT = 2.0 * rigid2d.polygon_moment(T_MASS, BAR)
T_COG = 0.5 * (BAR.mean(0) + STEM.mean(0))                      # (0, 45)

SCENE = rigid2d.Scene(
    box_corners=np.stack([BAR, STEM]),
    cog_local=T_COG,
    mass=T_MASS,
    moment=T_MOMENT,
    disc_radius=AGENT_RADIUS,
    wall_normals=np.array([[1, 0], [0, 1], [-1, 0], [0, -1]], np.float64),
    wall_offsets=np.array([WALL_LINE_LOW + WALL_RADIUS, WALL_LINE_LOW + WALL_RADIUS,
                           -(WALL_LINE_HIGH - WALL_RADIUS), -(WALL_LINE_HIGH - WALL_RADIUS)]),
    dt=DT,
)

# Colours (pygame names) and drawing as the reference's DrawOptions: the goal T filled, the
# block filled with the 1.2x lighter colour and outlined with 4 px fat segments, the agent a
# disc of radius 15 with a lighter disc of radius 11, the walls 4 px fat segments; drawn in
# that order (pymunk's debug_draw draws the block, then the agent, then the walls).
WHITE = (255, 255, 255)
GOAL_COLOUR = (144, 238, 144)           # LightGreen
BLOCK_OUTLINE = (119, 136, 153)         # LightSlateGray
BLOCK_FILL = (142, 163, 183)            # int(min(1.2 x LightSlateGray, 255))
AGENT_OUTER = (65, 105, 225)            # RoyalBlue
AGENT_INNER = (78, 126, 255)            # int(min(1.2 x RoyalBlue, 255))
WALL_COLOUR = (211, 211, 211)           # LightGray
OUTLINE_HALF_WIDTH = 2.0
AGENT_INNER_RADIUS = AGENT_RADIUS - 4

# The full state, f32 (STATE_DIM,): the reference's 7 numbers first, then what pymunk carries
# between steps (see the module docstring).
REFERENCE_DIM = 7
BLOCK_VELOCITY, BLOCK_SPIN = slice(7, 9), 9
BIAS_VELOCITY, BIAS_SPIN = slice(10, 12), 12
IMPULSES = slice(13, 13 + SCENE.num_contacts)
STATE_DIM = IMPULSES.stop


def _check_state(state, name='state'):
  state = jnp.asarray(state, jnp.float32)
  if state.shape != (STATE_DIM,):
    hint = (' (a reference observation: push_t.from_reference_obs(obs))'
            if state.shape == (REFERENCE_DIM,) else ' (vmap for batches)')
    raise ValueError(f'push_t {name} must be a full state of shape ({STATE_DIM},); got '
                     f'{state.shape}{hint}')
  return state


def _block_cog(block_xy, angle):
  return block_xy + rigid2d.rotation(angle) @ jnp.asarray(T_COG, jnp.float32)


def from_reference_obs(obs):
  """The full state f32 (STATE_DIM,) of a reference observation f32 (7,) [agent_xy, block_xy,
  angle, agent_vxy] with the block at rest and no contact history, as the reference's reset
  leaves it."""
  obs = jnp.asarray(obs, jnp.float32)
  if obs.shape != (REFERENCE_DIM,):
    raise ValueError(f'push_t reference observation must have shape (7,) [agent_xy, block_xy, '
                     f'angle, agent_vxy]; got {obs.shape} (vmap for batches)')
  # At rest with no contact history: every number pymunk carries between steps is 0.
  return jnp.concatenate([obs, jnp.zeros(STATE_DIM - REFERENCE_DIM, jnp.float32)])


def reference_obs(state):
  """f32 (7,): the reference's observation [agent_xy, block_xy, angle, agent_vxy] of a state."""
  return _check_state(state)[:REFERENCE_DIM]


def _block_body(state):
  return rigid2d.Body(cog=_block_cog(state[2:4], state[4]), angle=state[4],
                      velocity=state[BLOCK_VELOCITY], spin=state[BLOCK_SPIN],
                      bias_velocity=state[BIAS_VELOCITY], bias_spin=state[BIAS_SPIN],
                      impulses=state[IMPULSES])




def step(state, action):
  """One env step: `(state (STATE_DIM,), action (2,)) -> state` (see the module docstring)."""
  state = _check_state(state)
  action = jnp.asarray(action, jnp.float32)
  if action.shape != (2,):
    raise ValueError(f'push_t action must have shape (2,); got {action.shape}')
  agent, vel = state[:2], state[5:7]
  target = agent + ACTION_SCALE * action

  def substep(carry, _):
    agent, vel, body = carry
    vel = vel + (K_P * (target - agent) - K_V * vel) * DT
    agent = agent + vel * DT
    return (agent, vel, rigid2d.substep(SCENE, agent, vel, body)), None

  (agent, vel, body), _ = jax.lax.scan(substep, (agent, vel, _block_body(state)), None,
                                       length=SUBSTEPS)
  block = body.cog - rigid2d.rotation(body.angle) @ jnp.asarray(T_COG, jnp.float32)
  return jnp.concatenate([agent, block, jnp.mod(body.angle, 2 * jnp.pi)[None], vel,
                          body.velocity, body.spin[None], body.bias_velocity,
                          body.bias_spin[None], body.impulses])


def proprio(state):
  """f32 (4,): agent position and velocity (the block pose never reaches proprio)."""
  state = _check_state(state)
  return jnp.concatenate([state[:2], state[5:7]])


def _angle_difference(a, b):
  """Absolute angle difference wrapped to [0, pi], as the reference's eval_state."""
  d = jnp.abs(jnp.mod(a - b, 2 * jnp.pi))
  return jnp.minimum(d, 2 * jnp.pi - d)


def distance(state, goal):
  """f32 (): norm of the agent-and-block position error, one 4-vector (px)."""
  state, goal = _check_state(state), _check_state(goal, 'goal')
  return jnp.linalg.norm(state[:4] - goal[:4])


def is_success(state, goal):
  """bool (): the reference's eval_state: position 4-vector error < 20 px and angle < pi/9."""
  state, goal = _check_state(state), _check_state(goal, 'goal')
  return ((distance(state, goal) < SUCCESS_POSITION)
          & (_angle_difference(state[4], goal[4]) < SUCCESS_ANGLE))


def oracle_cost(state, goal):
  """f32 (): true-state planning cost, each term scaled by its success threshold:
  `|pos4 - goal4|^2 / 20^2 + 2 (1 - cos(angle error)) / (pi/9)^2` (the angle term is smooth and
  equals the squared angle error near 0)."""
  state, goal = _check_state(state), _check_state(goal, 'goal')
  position = jnp.sum(jnp.square(state[:4] - goal[:4])) / SUCCESS_POSITION ** 2
  angle = 2.0 * (1.0 - jnp.cos(state[4] - goal[4])) / SUCCESS_ANGLE ** 2
  return position + angle


def probe_targets(state):
  """f32 (6,): the block's centre of gravity x, y, the cos and sin of its angle, agent x, y.

  The block is probed at its centre of gravity, not at the state's body origin: the origin sits
  on the bar, 45 px from the centre, so a latent that places the T exactly but not its angle
  would still miss the origin by about 40 px."""
  state = _check_state(state)
  cog = _block_cog(state[2:4], state[4])
  return jnp.stack([cog[0], cog[1], jnp.cos(state[4]), jnp.sin(state[4]), state[0], state[1]])


# ----------------------------------------------------------------------------------- rendering

def _box_distances(px, py, x, y, angle):
  """Signed distances (2, ...) from pixels to the bar and the stem of a T posed at (x, y, angle)
  (< 0 inside). A pixel is inside a box where it is <= 0 and on its 4 px outline (the pygame
  fat segments of radius 2 along its edges, round caps included) where |distance| <= 2."""
  c, s = jnp.cos(angle), jnp.sin(angle)
  u = c * (px - x) + s * (py - y)             # body-frame coordinates of the pixels
  v = -s * (px - x) + c * (py - y)
  dists = []
  for box in (BAR, STEM):
    centre, half = box.mean(0), 0.5 * (box.max(0) - box.min(0))
    du, dv = jnp.abs(u - centre[0]) - half[0], jnp.abs(v - centre[1]) - half[1]
    outside = jnp.sqrt(jnp.maximum(du, 0.0) ** 2 + jnp.maximum(dv, 0.0) ** 2)
    dists.append(outside + jnp.minimum(jnp.maximum(du, dv), 0.0))
  return dists


def _canvas(state, px, py):
  """uint8 (..., 3) colours of the reference's 512 x 512 canvas at pixel coordinates px, py
  (column, row; pixel centres at integers). px, py are compile-time constants, so the fixed
  layers (the goal T, the walls) fold into constants."""
  with jax.ensure_compile_time_eval():
    goal = jnp.minimum(*_box_distances(px, py, *GOAL_POSE)) <= 0
    low, high, half = WALL_LINE_LOW, WALL_LINE_HIGH, WALL_RADIUS
    walls = ((jnp.abs(px - low) <= half) | (jnp.abs(px - high) <= half)
             | (jnp.abs(py - low) <= half) | (jnp.abs(py - high) <= half))
    walls &= ((px >= low - half) & (px <= high + half) & (py >= low - half)
              & (py <= high + half))
    colour = jnp.where(goal[..., None], jnp.asarray(GOAL_COLOUR, jnp.uint8),
                       jnp.asarray(WHITE, jnp.uint8))

  def paint(colour, mask, rgb):
    return jnp.where(mask[..., None], jnp.asarray(rgb, jnp.uint8), colour)

  for dist in _box_distances(px, py, state[2], state[3], state[4]):   # bar, then stem
    colour = paint(colour, dist <= 0, BLOCK_FILL)
    colour = paint(colour, jnp.abs(dist) <= OUTLINE_HALF_WIDTH, BLOCK_OUTLINE)
  r2 = (px - state[0]) ** 2 + (py - state[1]) ** 2
  colour = paint(colour, r2 <= AGENT_RADIUS ** 2, AGENT_OUTER)
  colour = paint(colour, r2 <= AGENT_INNER_RADIUS ** 2, AGENT_INNER)
  return paint(colour, walls, WALL_COLOUR)


def _bilinear_taps(size):
  """Source pixels (2, size) int32 and weights (2, size) f32 of a 512 -> size bilinear resize
  with half-pixel centres and no antialiasing (OpenCV's INTER_LINEAR, jax.image.resize)."""
  src = (np.arange(size) + 0.5) * (WORKSPACE / size) - 0.5
  src = np.clip(src, 0, WORKSPACE - 1)
  low = np.floor(src).astype(np.int32)
  high = np.minimum(low + 1, WORKSPACE - 1)
  frac = (src - low).astype(np.float32)
  return np.stack([low, high]), np.stack([1 - frac, frac])


def render(state, size=224):
  """RGB frame of the reference's canvas resized to `size` (static int).

  Equals drawing the 512 x 512 canvas and resizing it bilinearly (OpenCV INTER_LINEAR, no
  antialiasing), but only evaluates the canvas at the 2 x 2 source pixels of each output pixel.
  state: f32 (STATE_DIM,). Returns uint8 (size, size, 3).
  """
  if not isinstance(size, (int, np.integer)) or size < 1:
    raise ValueError(f'push_t render size must be a positive Python int (static); got {size!r}')
  state = _check_state(state)
  taps, weights = _bilinear_taps(int(size))
  coords = taps.reshape(-1).astype(np.float32)                             # (2 size,)
  canvas = _canvas(state, coords[None, :], coords[:, None]).astype(jnp.float32)
  canvas = canvas.reshape(2, size, 2, size, 3)                             # (ty, row, tx, col, 3)
  # The 2 x 2 weighted sum as one elementwise product and reduction (fuses with the canvas;
  # an einsum here becomes a batched matmul over tiny dims, several times slower).
  tap_weights = weights[:, :, None, None] * weights[None, None, :, :]      # (ty, row, tx, col)
  image = jnp.sum(canvas * jnp.asarray(tap_weights)[..., None], axis=(0, 2))
  return jnp.clip(jnp.round(image), 0, 255).astype(jnp.uint8)


# ----------------------------------------------------------------------- starts, goals, data

def _t_signed_distance(point, block_xy, angle):
  """f32 (): signed distance from `point` (2,) to the T (< 0 inside)."""
  return jnp.minimum(*_box_distances(point[0], point[1], block_xy[0], block_xy[1], angle))


def random_state(key, num_tries=32):
  """A data-collection start: agent uniform in [50, 450]^2, block position uniform in
  [100, 400]^2 and angle uniform in [0, 2 pi) (the reference's ranges), at rest; resampled until
  the agent clears the block by 5 px and the whole T lies inside the walls (the first of
  `num_tries` draws that does; all fail with negligible probability). Returns f32 (STATE_DIM,)."""
  keys = jax.random.split(key, 3)
  agent = jax.random.uniform(keys[0], (num_tries, 2), jnp.float32, 50.0, 450.0)
  block = jax.random.uniform(keys[1], (num_tries, 2), jnp.float32, 100.0, 400.0)
  angle = jax.random.uniform(keys[2], (num_tries,), jnp.float32, 0.0, 2 * jnp.pi)
  clearance = jax.vmap(_t_signed_distance)(agent, block, angle)
  corners = jax.vmap(lambda xy, a: rigid2d.world_corners(SCENE, _block_cog(xy, a), a))(
      block, angle)                                                        # (N, 2, 4, 2)
  lo, hi = WALL_LINE_LOW + WALL_RADIUS, WALL_LINE_HIGH - WALL_RADIUS
  inside = jnp.all((corners > lo) & (corners < hi), axis=(1, 2, 3))
  first = jnp.argmax((clearance > AGENT_RADIUS + 5.0) & inside)
  return from_reference_obs(jnp.concatenate([agent[first], block[first], angle[first][None],
                                            jnp.zeros(2)]))


ORBIT_RADIUS = 100.0   # clears the T (farthest point 77 px from its centre of gravity) + agent
ORBIT_STEP = 0.8       # rad per env step along that circle

# The T outline (body frame, y down) for the data policy: 8 edges, counter-clockwise on screen.
T_OUTLINE = np.array([[-60, 0], [60, 0], [60, 30], [15, 30], [15, 120], [-15, 120], [-15, 30],
                      [-60, 30]], np.float64)


def _outline_edges():
  a, b = T_OUTLINE, np.roll(T_OUTLINE, -1, 0)
  length = np.linalg.norm(b - a, axis=1)
  tangent = (b - a) / length[:, None]
  outward = np.stack([tangent[:, 1], -tangent[:, 0]], 1)    # this winding: (t_y, -t_x)
  return a, tangent, outward, length


def collect_actions(key, start, length, **policy_options):
  """Data policy (see `scripted_pusher`): f32 (length, 2) env actions from `start` (STATE_DIM,)."""
  return scripted_pusher(key, start, length, **policy_options)[0]


def scripted_pusher(key, start, length, *, push_steps=(5, 14), random_move_prob=0.15,
                    aim_noise=0.35, target_noise=8.0, max_action=0.4, gain=0.5, num_candidates=4):
  """Data policy: a scripted noisy pusher that mostly moves and rotates the block.

  The episode is a sequence of segments. A push segment picks a point on the T's outline
  (uniform by length) and a push direction (the inward normal turned by N(0, aim_noise) rad),
  both fixed in the block frame; the agent heads for a point 1.5 radii outside the contact
  point (going around the block along a circle that clears it when that point is on the far
  side), then, once within 10 px of it (or after the segment's approach budget), drives through
  the contact point for `push_steps` steps. With probability `random_move_prob` a segment is
  instead a random move to a uniform point of the workspace. Each push segment is the best of
  `num_candidates` draws: a Gumbel-noisy score that, once the block is over 80 px from the
  centre, increasingly favours pushes towards the centre, so the block rarely gets jammed against
  a wall (where a kinematic pusher squeezes it through the wall, in pymunk too). Targets get
  N(0, target_noise) px noise; the action is `gain * (target - agent) / 100` clipped to norm
  `max_action`. The defaults give the reference dataset's speed (its precomputed statistics:
  action std 0.20 per axis, agent velocity std 75 px/s; here 0.22 and 80 px/s): a constant action
  `a` drives the agent at about 370 `a` px/s.

  Args:
    key: PRNG key; start: f32 (STATE_DIM,) start state; length: static int number of env steps.
  Returns:
    actions f32 (length, 2) and the states it visited f32 (length + 1, STATE_DIM) (equal to
    `ENV.rollout(start, actions)`).
  """
  if not isinstance(length, (int, np.integer)) or length < 1:
    raise ValueError(f'collect_actions length must be a positive Python int; got {length!r}')
  start = _check_state(start, 'start')
  edge_start, tangent, outward, edge_len = (jnp.asarray(x, jnp.float32) for x in _outline_edges())
  edge_prob = edge_len / jnp.sum(edge_len)
  approach_budget = 12

  def new_segment(key, state):
    k = jax.random.split(key, 7)
    edge = jax.random.choice(k[0], edge_len.shape[0], (num_candidates,), p=edge_prob)
    point = (edge_start[edge]
             + jax.random.uniform(k[1], (num_candidates, 1)) * edge_len[edge, None] * tangent[edge])
    turn = aim_noise * jax.random.normal(k[2], (num_candidates,))
    c, s = jnp.cos(turn), jnp.sin(turn)
    inward = -outward[edge]
    direction = jnp.stack([c * inward[:, 0] - s * inward[:, 1], s * inward[:, 0] + c * inward[:, 1]], -1)
    # Away from the centre, prefer the candidate that pushes the block back towards it.
    offset = jnp.float32(WORKSPACE / 2) - state[2:4]
    pull = jnp.clip((jnp.linalg.norm(offset) - 80.0) / 40.0, 0.0, 4.0)
    align = (direction @ rigid2d.rotation(state[4]).T) @ (offset / jnp.maximum(jnp.linalg.norm(offset), 1e-6))
    best = jnp.argmax(pull * align + jax.random.gumbel(k[6], (num_candidates,)))
    steps = jax.random.randint(k[3], (), push_steps[0], push_steps[1] + 1)
    is_random = jax.random.uniform(k[4]) < random_move_prob
    random_goal = jax.random.uniform(k[5], (2,), jnp.float32, 60.0, 450.0)
    return dict(point=point[best], direction=direction[best], steps=steps, is_random=is_random,
                random_goal=random_goal, phase=jnp.int32(0), count=jnp.int32(0))

  def policy_step(carry, key):
    state, seg = carry
    k_seg, k_noise = jax.random.split(key)
    agent, block, angle = state[:2], state[2:4], state[4]
    rot = rigid2d.rotation(angle)
    contact = block + rot @ seg['point']
    direction = rot @ seg['direction']
    pre_contact = contact - direction * 1.5 * AGENT_RADIUS
    reached = jnp.linalg.norm(agent - pre_contact) < 10.0
    phase = jnp.where((seg['phase'] == 0) & (reached | (seg['count'] >= approach_budget)),
                      1, seg['phase'])
    count = jnp.where(phase != seg['phase'], 0, seg['count'])
    push_target = contact + direction * 2 * AGENT_RADIUS
    # Approach around the block, not through it: while the pre-contact point is more than
    # ORBIT_STEP rad away as seen from the centre of gravity, move along a circle that clears it.
    cog = _block_cog(block, angle)
    heading = lambda v: jnp.arctan2(v[1], v[0])
    turn = jnp.mod(heading(pre_contact - cog) - heading(agent - cog) + jnp.pi, 2 * jnp.pi) - jnp.pi
    orbit = heading(agent - cog) + jnp.clip(turn, -ORBIT_STEP, ORBIT_STEP)
    orbit_target = cog + ORBIT_RADIUS * jnp.stack([jnp.cos(orbit), jnp.sin(orbit)])
    approach = jnp.where(jnp.abs(turn) > ORBIT_STEP, orbit_target, pre_contact)
    target = jnp.where(phase == 0, approach, push_target)
    target = jnp.where(seg['is_random'], seg['random_goal'], target)
    target = target + target_noise * jax.random.normal(k_noise, (2,))
    action = gain * (target - agent) / ACTION_SCALE
    norm = jnp.linalg.norm(action)
    action = action * jnp.minimum(1.0, max_action / jnp.maximum(norm, 1e-6))
    done = jnp.where(seg['is_random'], count + 1 >= seg['steps'],
                     (phase == 1) & (count + 1 >= seg['steps']))
    seg = dict(seg, phase=phase, count=count + 1)
    fresh = new_segment(k_seg, state)
    seg = jax.tree_util.tree_map(lambda new, old: jnp.where(done, new, old), fresh, seg)
    return (step(state, action), seg), action

  key_first, key_steps = jax.random.split(key)
  carry = (start, new_segment(key_first, start))
  def record(carry, key):
    carry, action = policy_step(carry, key)
    return carry, (action, carry[0])

  _, (actions, states) = jax.lax.scan(record, carry, jax.random.split(key_steps, length))
  return actions, jnp.concatenate([start[None], states], 0)


def sample_start_goal(key):
  """Evaluation episode: a replayed data segment (the LeWorldModel protocol). From a
  `random_state`, the data policy runs `SEGMENT_START_STEPS` (25) steps; the state it reaches is
  the start (so the agent is engaged with the block, as in a dataset segment) and the state
  `GOAL_OFFSET_STEPS` (25) steps later is the goal, reachable by construction; the episode
  gets `EPISODE_STEPS` (50, LeWM's budget) env steps. Returns (start, goal) f32 (STATE_DIM,)."""
  key_start, key_policy = jax.random.split(key)
  path = scripted_pusher(key_policy, random_state(key_start),
                         SEGMENT_START_STEPS + GOAL_OFFSET_STEPS)[1]
  return path[SEGMENT_START_STEPS], path[-1]


ENV = base.Environment(
    name='push_t',
    state_dim=STATE_DIM,
    action_dim=2,
    proprio_dim=4,
    frameskip=FRAMESKIP,
    episode_steps=EPISODE_STEPS,
    step=step,
    render=render,
    proprio=proprio,
    is_success=is_success,
    distance=distance,
    sample_start_goal=sample_start_goal,
    random_state=random_state,
    collect_actions=collect_actions,
    probe_targets=probe_targets,
    oracle_cost=oracle_cost,
    probe_target_names=('block_cog_x', 'block_cog_y', 'block_cos', 'block_sin', 'agent_x',
                        'agent_y'),
    probe_groups=(('block', (0, 1)), ('block_angle', (2, 3)), ('agent', (4, 5))),
    distance_unit='px',
)
