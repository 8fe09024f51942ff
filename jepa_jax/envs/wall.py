"""The Wall environment (DotWall of the reference), as pure float32 JAX functions.

A dot moves in a 65 x 65 grid split into two rooms by a vertical wall band with one door
(docs/reference.md §6). Positions are `(x, y)` = (column, row) in grid pixels. Every function
is elementwise over a leading batch shape or plain enough to `jax.vmap`; none branches in Python
on traced values, so all of them can be jitted and vmapped over episodes.

Layout (grid pixels):
  border lines        x = 4, x = 60, y = 4, y = 60
  wall band           4 < y < 60 between the faces x = 29 and x = 35 (centre 32)
  door (hole)         rows 26 <= y <= 34 (centre 30) of the wall band
  left room           4 < x < 29;  right room  35 < x < 60
"""

import math

import jax
import jax.numpy as jnp
import numpy as np

from jepa_jax.envs import base

GRID_SIZE = 65
BORDER_LOW = 4.0
BORDER_HIGH = 60.0
WALL_CENTRE = 32.0
WALL_LEFT = 29.0     # left face of the wall band
WALL_RIGHT = 35.0    # right face of the wall band
DOOR_LOW = 26.0      # door rows are DOOR_LOW..DOOR_HIGH
DOOR_HIGH = 34.0
DOOR_CENTRE = (32.0, 30.0)
ACTION_SCALE = 2.0   # the env moves 2 * action per step
BOUNCE_OFFSET = 0.5  # distance a bounced dot is put from the intercept
CLAMP_MARGIN = 0.3   # distance a clamped coordinate is put from the barrier
DOT_SIGMA = 1.7      # rendering: std of the Gaussian dot, in pixels
SUCCESS_RADIUS = 4.5
EPISODE_STEPS = 30

# Evaluation start/goal ranges (docs/reference.md §6).
LEFT_START_X = (7.4, 25.6)
RIGHT_START_X = (38.4, 56.6)
START_Y = (7.4, 56.6)


def _check_xy(value, name):
  value = jnp.asarray(value, jnp.float32)
  if value.ndim < 1 or value.shape[-1] != 2:
    raise ValueError(f'{name} must have shape (..., 2) (x, y); got shape {value.shape}')
  return value


def _crosses(start, end, line):
  """Reference crossing test: the segment start -> end touches or passes `line` (1-D coords)."""
  return jnp.sign(start - line) * jnp.sign(end - line) <= 0.1


def _safe(d):
  """Denominator with zeros replaced by 1 (the results are masked out where d == 0)."""
  return jnp.where(d == 0, 1.0, d)


def _door_edges(pos, proposed):
  """Rule 1: the dot runs into the top or bottom edge of the door corridor.

  Moving +y across y = DOOR_HIGH (34) with the x-intercept x* in [29, 35] gives
  (x* + 0.5, 33.5); moving -y across y = DOOR_LOW (26) likewise gives (x* + 0.5, 26.5).
  Returns (hit bool[...], new position f32[..., 2]).
  """
  sx, sy = pos[..., 0], pos[..., 1]
  dx, dy = proposed[..., 0] - sx, proposed[..., 1] - sy

  def edge(line, moving_toward):
    crossed = moving_toward & _crosses(sy, proposed[..., 1], line)
    x_star = sx + dx * (line - sy) / _safe(dy)
    return crossed & (x_star >= WALL_LEFT) & (x_star <= WALL_RIGHT), x_star

  hit_bottom, x_bottom = edge(DOOR_HIGH, dy > 0)
  hit_top, x_top = edge(DOOR_LOW, dy < 0)
  # dy has one sign, so at most one of the two edges is hit.
  x_new = jnp.where(hit_bottom, x_bottom, x_top) + BOUNCE_OFFSET
  y_new = jnp.where(hit_bottom, DOOR_HIGH - BOUNCE_OFFSET, DOOR_LOW + BOUNCE_OFFSET)
  return hit_bottom | hit_top, jnp.stack([x_new, y_new], -1)


def _barrier_bounce(pos, proposed):
  """Rules 2 and 3: the nearest barrier hit by the step, the bounce, and the clamp.

  Barriers (infinite lines): vertical x = 4, x = 60 and the inner face on the dot's side
  (x = 29 if s.x < 32 else x = 35) whose door hole 26 <= y <= 34 lets the dot through;
  horizontal y = 4, y = 60. A line is crossed when `sign(s - X) * sign(p' - X) <= 0.1`
  and the step has a component across it (a step parallel to a line never crosses it, which
  also keeps the intercept finite). The intercept lies on the step's line. Among all hits,
  the intercept nearest to s wins (on an exact tie, the vertical barrier, listed first).
  The bounced point is the intercept + (0.5 sign(s.x - X), +0.5) for a vertical barrier and
  + (+0.5, 0.5 sign(s.y - Y)) for a horizontal one; it is then clamped into the room the dot
  starts in (x in [4, 29] if s.x < 32 else [35, 60]; y in [4, 60]): a coordinate at or past a
  barrier is set 0.3 inside it.
  Returns (hit bool[...], new position f32[..., 2]).
  """
  sx, sy = pos[..., 0:1], pos[..., 1:2]          # (..., 1) to broadcast over barriers
  px, py = proposed[..., 0:1], proposed[..., 1:2]
  dx, dy = px - sx, py - sy
  left_side = sx < WALL_CENTRE
  ones = jnp.ones_like(sx)

  # Vertical barriers (..., 3): borders then the inner face; only the inner one has a hole.
  xs = jnp.concatenate(
      [BORDER_LOW * ones, BORDER_HIGH * ones, jnp.where(left_side, WALL_LEFT, WALL_RIGHT)], -1)
  has_hole = jnp.array([False, False, True])
  y_at = sy + dy * (xs - sx) / _safe(dx)
  in_hole = has_hole & (y_at >= DOOR_LOW) & (y_at <= DOOR_HIGH)
  hit_v = (dx != 0) & _crosses(sx, px, xs) & ~in_hole
  point_v = jnp.stack([xs, y_at], -1)
  bounce_v = jnp.stack([xs + BOUNCE_OFFSET * jnp.sign(sx - xs), y_at + BOUNCE_OFFSET], -1)

  # Horizontal barriers (..., 2): the borders, no hole.
  ys = jnp.concatenate([BORDER_LOW * ones, BORDER_HIGH * ones], -1)
  x_at = sx + dx * (ys - sy) / _safe(dy)
  hit_h = (dy != 0) & _crosses(sy, py, ys)
  point_h = jnp.stack([x_at, ys], -1)
  bounce_h = jnp.stack([x_at + BOUNCE_OFFSET, ys + BOUNCE_OFFSET * jnp.sign(sy - ys)], -1)

  hits = jnp.concatenate([hit_v, hit_h], -1)                      # (..., 5)
  points = jnp.concatenate([point_v, point_h], -2)                # (..., 5, 2)
  bounces = jnp.concatenate([bounce_v, bounce_h], -2)             # (..., 5, 2)
  dist2 = jnp.sum((points - pos[..., None, :]) ** 2, -1)
  nearest = jnp.argmin(jnp.where(hits, dist2, jnp.inf), -1)      # first index on ties
  bounced = jnp.take_along_axis(bounces, nearest[..., None, None], -2)[..., 0, :]

  x_low = jnp.where(left_side[..., 0], BORDER_LOW, WALL_RIGHT)
  x_high = jnp.where(left_side[..., 0], WALL_LEFT, BORDER_HIGH)
  bx, by = bounced[..., 0], bounced[..., 1]
  bx = jnp.where(bx <= x_low, x_low + CLAMP_MARGIN,
                 jnp.where(bx >= x_high, x_high - CLAMP_MARGIN, bx))
  by = jnp.where(by <= BORDER_LOW, BORDER_LOW + CLAMP_MARGIN,
                 jnp.where(by >= BORDER_HIGH, BORDER_HIGH - CLAMP_MARGIN, by))
  return jnp.any(hits, -1), jnp.stack([bx, by], -1)


def transition(pos, action):
  """One env step (docs/reference.md §6).

  Args:
    pos: f32 (..., 2) dot position (x, y) in grid pixels.
    action: f32 (..., 2), not clipped; the proposed position is p' = pos + 2 * action.
  Returns:
    f32 (..., 2) next position: rule 1 (door edges) if it applies, else rules 2-3 (nearest
    barrier hit: bounce + clamp) if any barrier is hit, else p' (rule 4).
  """
  pos = _check_xy(pos, 'pos')
  action = _check_xy(action, 'action')
  pos, action = jnp.broadcast_arrays(pos, action)
  proposed = pos + ACTION_SCALE * action
  door_hit, door_pos = _door_edges(pos, proposed)
  barrier_hit, barrier_pos = _barrier_bounce(pos, proposed)
  out = jnp.where(barrier_hit[..., None], barrier_pos, proposed)
  return jnp.where(door_hit[..., None], door_pos, out)


def rollout(pos0, actions):
  """Positions visited by applying `actions` from `pos0`.

  Args:
    pos0: f32 (2,) start position.
    actions: f32 (T, 2) env actions.
  Returns:
    f32 (T + 1, 2): pos0 followed by the T next positions.
  """
  pos0 = _check_xy(pos0, 'pos0')
  actions = _check_xy(actions, 'actions')
  if pos0.shape != (2,) or actions.ndim != 2:
    raise ValueError(f'rollout takes pos0 (2,) and actions (T, 2); got {pos0.shape} and '
                     f'{actions.shape} (vmap it for batches)')

  def step(pos, action):
    nxt = transition(pos, action)
    return nxt, nxt

  _, path = jax.lax.scan(step, pos0, actions)
  return jnp.concatenate([pos0[None], path], 0)


def is_success(pos, goal):
  """bool (...): the dot is strictly within SUCCESS_RADIUS of the goal. pos, goal: (..., 2)."""
  pos, goal = _check_xy(pos, 'pos'), _check_xy(goal, 'goal')
  return jnp.linalg.norm(goal - pos, axis=-1) < SUCCESS_RADIUS


def _wall_mask():
  """bool (65, 65) [row, col]: wall band outside the door rows, plus the four border lines."""
  idx = np.arange(GRID_SIZE)
  rows, cols = idx[:, None], idx[None, :]
  band = (cols >= WALL_LEFT) & (cols <= WALL_RIGHT) & ((rows < DOOR_LOW) | (rows > DOOR_HIGH))
  border = (np.isin(rows, (BORDER_LOW, BORDER_HIGH))) | np.isin(cols, (BORDER_LOW, BORDER_HIGH))
  return band | border


def render(pos, size=GRID_SIZE):
  """RGB observation of the dot.

  A red Gaussian dot (std 1.7 px, peak-normalised) on white, black walls, drawn on the 65 x 65
  grid with pixel centres at integer (col, row), then bilinearly resized (no antialiasing).

  Args:
    pos: f32 (..., 2) dot position (x, y).
    size: static int, output side in pixels.
  Returns:
    uint8 (..., size, size, 3).
  """
  if not isinstance(size, (int, np.integer)) or size < 1:
    raise ValueError(f'render size must be a positive Python int (static); got {size!r}')
  pos = _check_xy(pos, 'pos')
  grid = jnp.arange(GRID_SIZE, dtype=jnp.float32)
  d2 = ((grid[None, :] - pos[..., 0, None, None]) ** 2
        + (grid[:, None] - pos[..., 1, None, None]) ** 2)          # (..., row, col)
  dot = jnp.exp(-d2 / (2 * DOT_SIGMA ** 2))
  dot = dot / jnp.max(dot, axis=(-2, -1), keepdims=True)
  green_blue = 255 - (255 * dot).astype(jnp.uint8)                 # uint8 cast truncates
  image = jnp.stack([jnp.full_like(green_blue, 255), green_blue, green_blue], -1)
  image = jnp.where(jnp.asarray(_wall_mask())[..., None], jnp.uint8(0), image)
  if size == GRID_SIZE:
    return image
  shape = image.shape[:-3] + (size, size, 3)
  resized = jax.image.resize(image.astype(jnp.float32), shape, 'bilinear', antialias=False)
  return jnp.clip(jnp.round(resized), 0, 255).astype(jnp.uint8)


def sample_start_goal(key):
  """Evaluation start and goal, always in opposite rooms (docs/reference.md §6).

  Draws in order sx ~ U[7.4, 25.6], gx ~ U[38.4, 56.6], sy ~ U[7.4, 56.6], gy ~ U[7.4, 56.6]
  (one uniform vector, in that order), then swaps sx and gx with probability 0.5.
  Returns (start f32 (2,), goal f32 (2,)).
  """
  u = jax.random.uniform(key, (5,), jnp.float32)
  lo = jnp.array([LEFT_START_X[0], RIGHT_START_X[0], START_Y[0], START_Y[0]], jnp.float32)
  hi = jnp.array([LEFT_START_X[1], RIGHT_START_X[1], START_Y[1], START_Y[1]], jnp.float32)
  sx, gx, sy, gy = lo + (hi - lo) * u[:4]
  swap = u[4] < 0.5
  start = jnp.stack([jnp.where(swap, gx, sx), sy])
  goal = jnp.stack([jnp.where(swap, sx, gx), gy])
  return start, goal


def random_start(key, margin=1.0):
  """Uniform position in either room (each room with probability 1/2), `margin` px inside it.

  Returns f32 (2,).
  """
  if not 0 <= margin < (WALL_LEFT - BORDER_LOW) / 2:
    raise ValueError(
        f'random_start margin must be in [0, {(WALL_LEFT - BORDER_LOW) / 2}); got {margin}')
  u = jax.random.uniform(key, (3,), jnp.float32)
  x_left = BORDER_LOW + margin + u[0] * (WALL_LEFT - BORDER_LOW - 2 * margin)
  x_right = WALL_RIGHT + margin + u[0] * (BORDER_HIGH - WALL_RIGHT - 2 * margin)
  y = BORDER_LOW + margin + u[1] * (BORDER_HIGH - BORDER_LOW - 2 * margin)
  return jnp.stack([jnp.where(u[2] < 0.5, x_left, x_right), y])


def sample_von_mises(key, kappa, shape=(), num_tries=16):
  """Von Mises angles with mean 0 and concentration `kappa` (Best & Fisher 1979 rejection).

  Each sample makes `num_tries` proposals at once and keeps the first accepted one. The
  acceptance rate is above 0.65 for every kappa, so all tries fail with probability below
  0.35**16 < 1e-7; such a sample keeps its last proposal (a negligible bias).

  Args:
    key: PRNG key.
    kappa: Python float > 0 (static).
    shape: output shape.
  Returns:
    f32 `shape` angles in [-pi, pi].
  """
  kappa = float(kappa)
  if not kappa > 0:
    raise ValueError(f'von Mises kappa must be > 0; got {kappa}')
  tau = 1.0 + math.sqrt(1.0 + 4.0 * kappa ** 2)
  rho = (tau - math.sqrt(2.0 * tau)) / (2.0 * kappa)
  r = (1.0 + rho ** 2) / (2.0 * rho)
  shape = tuple(shape)
  # One flat draw, reshaped: XLA:CPU compiles a multi-dimensional draw far more slowly.
  u = jax.random.uniform(key, (3 * num_tries * math.prod(shape),), jnp.float32,
                         minval=jnp.finfo(jnp.float32).tiny)
  u1, u2, u3 = u.reshape((3, num_tries) + shape)
  z = jnp.cos(jnp.pi * u1)
  f = (1.0 + r * z) / (r + z)
  c = kappa * (r - f)
  accept = (c * (2.0 - c) - u2 > 0) | (jnp.log(c / u2) + 1.0 - c >= 0)
  accept = accept.at[-1].set(True)                    # fallback: the last proposal
  first = jnp.argmax(accept, axis=0)
  f = jnp.take_along_axis(f, first[None], 0)[0]
  sign = jnp.where(jnp.take_along_axis(u3, first[None], 0)[0] < 0.5, -1.0, 1.0)
  return sign * jnp.arccos(jnp.clip(f, -1.0, 1.0))


def random_walk_actions(key, num_steps, start, *, kappa=8.0, step_mean=1.0, step_std=0.4,
                        step_low=0.2, step_high=1.8, door_bias_prob=0.5, door_reach=3.0,
                        reverse_on_block=False):
  """Training-data policy: a random walk whose actions depend on the visited positions.

  Step length ~ normal(step_mean, step_std) truncated to [step_low, step_high]; action =
  length * (cos h, sin h) (the env then moves 2 * action). The heading h is a random walk
  with von Mises(0, kappa) increments, starting uniform, as in the reference: a walk that runs
  into a wall keeps pushing against it until its heading drifts away, which is the data that
  teaches a world model that walls block. With `reverse_on_block` the heading is instead
  reversed after any step that hit a wall or a door edge.
  Door bias: with probability `door_bias_prob` a trajectory first heads for the door entry on
  its own side (x = 32 -+ 6, y = 30) until within `door_reach` px of it (or inside the door),
  then for the exit point on the far side, and once past the far wall face (by 1 px) it goes
  on as the plain random walk. While biased, h = direction to the waypoint + von Mises noise.

  Args:
    key: PRNG key.
    num_steps: static int T.
    start: f32 (2,) start position (rollout(start, actions) reproduces the walk).
    door_bias_prob: float in [0, 1] (may be a traced scalar).
    kappa, step_*, door_reach: static Python floats.
    reverse_on_block: static Python bool.
  Returns:
    f32 (T, 2) env actions.
  """
  if not isinstance(num_steps, (int, np.integer)) or num_steps < 1:
    raise ValueError(f'num_steps must be a positive Python int; got {num_steps!r}')
  if isinstance(door_bias_prob, (int, float)) and not 0.0 <= door_bias_prob <= 1.0:
    raise ValueError(f'door_bias_prob must be in [0, 1]; got {door_bias_prob}')
  if not (step_std > 0 and step_low < step_mean < step_high):
    raise ValueError('need step_std > 0 and step_low < step_mean < step_high; got '
                     f'{step_std}, {step_low}, {step_mean}, {step_high}')
  start = _check_xy(start, 'start')
  if start.shape != (2,):
    raise ValueError(f'start must have shape (2,); got {start.shape} (vmap for batches)')

  key_heading, key_bias, key_len, key_noise = jax.random.split(key, 4)
  lengths = step_mean + step_std * jax.random.truncated_normal(
      key_len, (step_low - step_mean) / step_std, (step_high - step_mean) / step_std,
      (num_steps,), jnp.float32)
  noise = sample_von_mises(key_noise, kappa, (num_steps,))
  heading0 = jax.random.uniform(key_heading, (), jnp.float32, -jnp.pi, jnp.pi)
  biased = jax.random.uniform(key_bias, ()) < door_bias_prob

  side = jnp.where(start[0] < WALL_CENTRE, -1.0, 1.0)       # -1: starts in the left room
  half_band = (WALL_RIGHT - WALL_LEFT) / 2
  entry = jnp.stack([WALL_CENTRE + side * 2 * half_band, DOOR_CENTRE[1]])
  exit_ = jnp.stack([WALL_CENTRE - side * 2 * half_band, DOOR_CENTRE[1]])

  def step(carry, inputs):
    pos, heading, phase = carry           # phase 0: to entry, 1: to exit, 2: free walk
    length, dh = inputs
    in_door = ((jnp.abs(pos[0] - WALL_CENTRE) <= half_band)
               & (pos[1] >= DOOR_LOW) & (pos[1] <= DOOR_HIGH))
    phase = jnp.where((phase == 0) & ((jnp.linalg.norm(pos - entry) < door_reach) | in_door),
                      1, phase)
    past_far_face = side * (pos[0] - WALL_CENTRE) < -(half_band + 1.0)
    phase = jnp.where((phase == 1) & past_far_face, 2, phase)
    target = jnp.where(phase == 0, entry, exit_)
    aim = jnp.arctan2(target[1] - pos[1], target[0] - pos[0])
    heading = jnp.where(biased & (phase < 2), aim, heading) + dh
    action = length * jnp.stack([jnp.cos(heading), jnp.sin(heading)])
    nxt = transition(pos, action)
    if reverse_on_block:
      blocked = jnp.any(jnp.abs(nxt - (pos + ACTION_SCALE * action)) > 1e-4)
      heading = jnp.where(blocked, heading + jnp.pi, heading)
    return (nxt, heading, phase), action

  _, actions = jax.lax.scan(step, (start, heading0, jnp.int32(0)), (lengths, noise))
  return actions


def _distance(pos, goal):
  return jnp.linalg.norm(goal - pos, axis=-1)


def _collect_actions(key, start, length):
  return random_walk_actions(key, length, start)


def reference_start_goal(seed):
  """The reference's seeded evaluation draw, `DotWall.generate_random_state(seed)`, exactly.

  `rs = np.random.RandomState(seed)`; in order sx ~ U[7.4, 25.6), gx ~ U[38.4, 56.6),
  sy ~ U[7.4, 56.6), gy ~ U[7.4, 56.6) (`rs.uniform`), then sx and gx swap when
  `rs.uniform(0, 1) < 0.5`. The bounds are the reference's `border_wall_loc - 1 + 2 * dot_std`
  etc., which equal these float64 literals bit for bit.
  Args:
    seed: Python or numpy int in [0, 2**32) (the reference's episode seed).
  Returns:
    (start, goal), each float64 numpy `(2,)` = (x, y).
  """
  if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)) \
      or not 0 <= seed < 2**32:
    raise ValueError(f'reference_start_goal seed must be an int in [0, 2**32); got {seed!r}')
  rs = np.random.RandomState(int(seed))
  start_x = rs.uniform(*LEFT_START_X)
  goal_x = rs.uniform(*RIGHT_START_X)
  start_y = rs.uniform(*START_Y)
  goal_y = rs.uniform(*START_Y)
  if rs.uniform(0.0, 1.0) < 0.5:  # the reference travels right-to-left half of the time
    start_x, goal_x = goal_x, start_x
  return np.array([start_x, start_y]), np.array([goal_x, goal_y])


ENV = base.Environment(
    name='wall',
    state_dim=2,
    action_dim=2,
    proprio_dim=2,
    frameskip=5,
    episode_steps=EPISODE_STEPS,
    step=transition,
    render=render,
    proprio=lambda pos: pos,
    is_success=is_success,
    distance=_distance,
    sample_start_goal=sample_start_goal,
    random_state=random_start,
    collect_actions=_collect_actions,
    probe_targets=lambda pos: pos,
    oracle_cost=lambda pos, goal: jnp.sum(jnp.square(goal - pos), axis=-1),
    reference_start_goal=reference_start_goal,
    probe_target_names=('x', 'y'),
    distance_unit='px',
    # Pixel centres sit at integer (col, row) of the 65-grid; y (rows) grows downwards.
    plot_extent=(-0.5, GRID_SIZE - 0.5, GRID_SIZE - 0.5, -0.5),
)
