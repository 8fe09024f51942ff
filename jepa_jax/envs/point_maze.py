"""PointMaze (D4RL maze2d-umaze, the reference's MuJoCo point mass) as pure float32 JAX functions.

The reference (docs/reference.md §7) simulates a sphere (radius 0.1, density 1000, so mass
4.18879 kg) on two slide joints with MuJoCo: timestep 0.01 s, Euler integrator (joint damping 1
integrated implicitly), motors of gear 100 on controls clipped to [-1, 1], soft frictionless
contacts (condim 1, margin 0.002 per geom, default solref/solimp) against 1 x 1 wall boxes.
One env step clips the velocity to +-5, then runs MuJoCo's `frame_skip = 5` physics steps
(0.05 s). The world model's `frameskip = 5` is a different thing: 5 env steps per model action,
so one model step is 25 physics steps. State = `[x, y, vx, vy]` = (qpos, qvel): positions are
slide-joint displacements from the ball's rest position (1.2, 1.2) in the MuJoCo world frame.

Dynamics: a pure-JAX re-implementation of what MuJoCo computes for this model, step by step:
sphere-box signed distances and normals for the walls of the 4 cells around the ball's nearest
grid corner (no other wall is within its reach); contacts active below the margin 0.004
(MuJoCo adds the two geoms' 0.002 margins); per contact the impedance
`imp(|dist - margin| / 0.001)` of solimp (0.9, 0.95, 0.001, 0.5, 2), the reference acceleration
`aref = -b * vel - k * imp * (dist - margin)` with `k = 1 / (0.95 * 0.02)**2`,
`b = 2 / (0.95 * 0.02)`, and the regulariser
`R = (1 - imp) / imp / mass`; the constrained acceleration minimises MuJoCo's primal cost
`0.5 m |a - a0|^2 + sum 0.5/R min(0, n.a - aref)^2` exactly (every active set of the contacts is
solved in closed form and the cheapest candidate kept: the cost is convex, so that is the global
minimum MuJoCo's Newton solver converges to); then the implicit-damping Euler update
`v += h m a / (m + h)`, `q += h v`.

Accuracy against CPU MuJoCo 4.0.0 on `mjcf_xml()` (float64), 64 trajectories of 100 env steps
from `random_state` under `collect_actions` (every trajectory touches walls; 17 % of the steps):
  every env step from the same state (float32): max |xy error| 6e-7, max |v error| 1.2e-5
    (a float64 build of this code agrees to 1e-14 per physics step);
  free runs of one episode (30 env steps): max |xy error| per trajectory: median 8e-6,
    90 % 6e-5, max 7e-4;
  free runs of 100 env steps: median 0.024, 90 % 0.32, max 1.4. This is MuJoCo's own
    sensitivity, not a modelling error: a contact switching on at the margin adds its damping
    term `-b * vel` at once, which amplifies rounding; MuJoCo against itself with the start
    moved by 1e-7 differs by median 0.003, 90 % 0.12, max 0.40 after 100 steps.
  MJX 3.17 (float32, same MJCF, its default solver settings) is much further off: 30-step free
    runs median 0.03, max 1.1; 100 steps median 0.57.
Speed on the shared 2-core CPU (load 15-20), 256 trajectories x 100 env steps, jit + vmap:
  pure JAX: compile ~5 s, 0.12-0.26 s per batch (100k-220k env steps/s);
  MJX: compile 82-138 s, 40 s per batch (645 env steps/s; 1981/s for 64 trajectories);
  CPU MuJoCo, one Python loop (the reference's way): 4.1k env steps/s.
Hence the pure-JAX dynamics: as exact as float32 allows and two orders of magnitude faster.

Rendering: the reference renders MuJoCo's free camera straight down (azimuth 90, elevation -90)
at mujoco-py's default placement (look-at = median geom position = the maze centre, distance =
model extent 9.7348, fovy 45). `render` reproduces that perspective view analytically: floor
checker (texture colours, 2 x 2 squares), wall tops with MuJoCo's headlight shading (ambient
0.4 + diffuse 0.8 + Blinn-Phong specular 0.05 * (n.h)^64), one-pixel dark side faces, and the
green site sphere (radius 0.2, shaded the same way) that marks the ball; edges are antialiased.
The static part (floor and walls) is computed once per image size in numpy; each frame only
shades a small patch around the ball. Against MuJoCo 4.0's OpenGL renderer (EGL) with the same
camera: mean |difference| 0.09 / 255 per channel; ~3000 frames/s at 224 px on the loaded CPU.

Version note: the numbers above are MuJoCo 3.17 / 4.0's (summed margins, invweight 1/mass,
model extent 9.7348); the reference ran mujoco-py on MuJoCo 2.1, not available here to check.
"""

import functools
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np

from jepa_jax.envs import base

# --- Layout (the reference's U_MAZE string: row i is the first coordinate x, column j is y) ---
U_MAZE = ('#####',
          '#GOO#',
          '###O#',
          '#OOO#',
          '#####')
BODY_REST = 1.2            # the particle body sits at world (1.2, 1.2); state xy = world - 1.2
CELL_HALF = 0.5            # wall boxes are 1 x 1 (half-size 0.5, 0.5, 0.2) at world (i+1, j+1)
WALL_HEIGHT = 0.2          # half-height in z of a wall box (tops at z = 0.2)
FLOOR_Z = -0.1

# --- Physics (MuJoCo model of the reference) ---
TIMESTEP = 0.01
PHYSICS_STEPS = 5          # MuJoCo frame_skip of one env step
BALL_RADIUS = 0.1
MASS = 1000.0 * 4.0 / 3.0 * math.pi * BALL_RADIUS ** 3   # inertiafromgeom, density 1000
DAMPING = 1.0
GEAR = 100.0
VELOCITY_LIMIT = 5.0
GEOM_MARGIN = 0.002
CONTACT_MARGIN = 2 * GEOM_MARGIN   # MuJoCo adds the two geoms' margins
SOLREF = (0.02, 1.0)               # MuJoCo defaults: time constant, damping ratio
SOLIMP = (0.9, 0.95, 0.001, 0.5, 2.0)   # dmin, dmax, width, midpoint, power
NUM_CONTACTS = 3   # walls considered per step: those among the 4 cells around the ball's
                   # nearest grid corner (at most 3 here), the only ones within its reach

# --- Task (reference: pointmaze_gym_wrap.py and the mz planning config) ---
SUCCESS_RADIUS = 0.5
EPISODE_STEPS = 30                 # frameskip 5 x goal_H 6
FRAMESKIP = 5
SAMPLE_LOW, SAMPLE_HIGH = 0.5, 3.1          # rejection-sampling box of start/goal xy
SIDE_HIGH, TOP_LOW = 1.1, 2.5               # U region: x <= 1.1 or x >= 2.5, or y >= 2.5
VELOCITY_RANGE = 5.2262554                  # the reference's STATE_RANGES for vx, vy

# --- Camera and colours (mujoco-py free camera; colours measured on MuJoCo's renderer) ---
CAMERA_DISTANCE = 9.734846922834954        # mjModel.stat.extent of this model
CAMERA_TAN_HALF_FOVY = math.tan(math.radians(45.0) / 2)
LOOK_AT = 3.0 - BODY_REST                  # median geom position = maze centre (world 3, 3)
SITE_RADIUS = 0.2                          # the visible ball is the 0.2 site, not the geom
FLOOR_DARK = (25, 51, 76)                  # checker texture rgb2 (0.1, 0.2, 0.3), uint8
FLOOR_LIGHT = (51, 76, 102)                # rgb1 (0.2, 0.3, 0.4)
CHECKER = 2.0                              # checker square side (texrepeat 20 on 80 x 80)
WALL_RGB = (0.7, 0.5, 0.3)
BALL_RGB = (0.3, 0.6, 0.3)
AMBIENT, DIFFUSE, SPECULAR, SHININESS = 0.4, 0.8, 0.05, 64.0
SUPERSAMPLE = 4                            # samples per pixel side for the static layers


WALL_CELLS = tuple((i, j) for i, row in enumerate(U_MAZE) for j, c in enumerate(row) if c == '#')


def _wall_centres():
  """f64 (W, 2): wall box centres in state coordinates."""
  return np.array([(i + 1 - BODY_REST, j + 1 - BODY_REST) for i, j in WALL_CELLS])


WALL_CENTRES = _wall_centres()
_FAR = 1e3                 # centre of a stand-in box that pads short contact lists


def _corner_walls():
  """i32 (4, 4, NUM_CONTACTS): for each inner grid corner (kx, ky), shared by the cells kx, kx+1
  (x) and ky, ky+1 (y), the rows of WALL_CENTRES among those 4 cells, padded with the index of
  the stand-in box (row W of `_CONTACT_BOXES`)."""
  index = {cell: n for n, cell in enumerate(WALL_CELLS)}
  table = np.full((4, 4, NUM_CONTACTS), len(WALL_CELLS), np.int32)
  for kx, ky in itertools.product(range(4), range(4)):
    near = [index[(i, j)] for i in (kx, kx + 1) for j in (ky, ky + 1) if (i, j) in index]
    if len(near) > NUM_CONTACTS:
      raise ValueError(f'grid corner {(kx, ky)} touches {len(near)} walls; raise NUM_CONTACTS')
    table[kx, ky, :len(near)] = near
  return table


_CORNER_WALLS = _corner_walls()
_CONTACT_BOXES = np.concatenate([WALL_CENTRES, [[_FAR, _FAR]]])


def mjcf_xml() -> str:
  """The reference's MuJoCo model (maze_model.point_maze(U_MAZE)) as an MJCF string.

  For MuJoCo / MJX comparisons; this module's dynamics do not need MuJoCo. (The reference's
  `coordinate="local"` compiler attribute is MuJoCo's only behaviour and no longer parsed.)
  """
  walls = ''.join(
      f'    <geom conaffinity="1" type="box" name="wall_{i}_{j}" material="wall" '
      f'pos="{i + 1} {j + 1} 0" size="{CELL_HALF} {CELL_HALF} {WALL_HEIGHT}"/>\n'
      for i, row in enumerate(U_MAZE) for j, c in enumerate(row) if c == '#')
  return f'''<mujoco model="point_maze">
  <compiler inertiafromgeom="true" angle="radian"/>
  <option timestep="{TIMESTEP}" gravity="0 0 0" iterations="20" integrator="Euler"/>
  <default>
    <joint damping="{DAMPING}" limited="false"/>
    <geom friction=".5 .1 .1" density="1000" margin="{GEOM_MARGIN}" condim="1" contype="2"
          conaffinity="1"/>
  </default>
  <asset>
    <texture type="2d" name="groundplane" builtin="checker" rgb1="0.2 0.3 0.4"
             rgb2="0.1 0.2 0.3" width="100" height="100"/>
    <material name="groundplane" texture="groundplane" texrepeat="20 20"/>
    <material name="wall" rgba=".7 .5 .3 1"/>
    <material name="target" rgba=".6 .3 .3 1"/>
  </asset>
  <visual>
    <headlight ambient=".4 .4 .4" diffuse=".8 .8 .8" specular="0.1 0.1 0.1"/>
    <map znear="0.01"/>
  </visual>
  <worldbody>
    <geom name="ground" size="40 40 0.25" pos="0 0 {FLOOR_Z}" type="plane" contype="1"
          conaffinity="0" material="groundplane"/>
    <body name="particle" pos="{BODY_REST} {BODY_REST} 0">
      <geom name="particle_geom" type="sphere" size="{BALL_RADIUS}" rgba="0 0 1 0" contype="1"/>
      <site name="particle_site" pos="0 0 0" size="{SITE_RADIUS}" rgba="0.3 0.6 0.3 1"/>
      <joint name="ball_x" type="slide" pos="0 0 0" axis="1 0 0"/>
      <joint name="ball_y" type="slide" pos="0 0 0" axis="0 1 0"/>
    </body>
    <site name="target_site" pos="0 0 0" size="0.2" material="target"/>
{walls}  </worldbody>
  <actuator>
    <motor joint="ball_x" ctrlrange="-1 1" ctrllimited="true" gear="{GEAR}"/>
    <motor joint="ball_y" ctrlrange="-1 1" ctrllimited="true" gear="{GEAR}"/>
  </actuator>
</mujoco>
'''


# ----------------------------------------------------------------------------------------------
# Dynamics


def _check_last(value, size, name):
  value = jnp.asarray(value, jnp.float32)
  if value.ndim < 1 or value.shape[-1] != size:
    raise ValueError(f'{name} must have shape (..., {size}); got shape {value.shape}')
  return value


def _contacts(pos):
  """The walls around a ball at `pos` (2,): those of the cells around its nearest grid corner.

  Returns (dist (C,) signed ball-surface-to-box distance, normal (C, 2) unit vector from the
  box towards the ball), as MuJoCo's sphere-box collision: the nearest box point while the
  centre is outside the box, the least-penetrated face once inside. The boxes are 3-D: a centre
  more than WALL_HEIGHT (0.2) inside both x and y faces is nearest to the top face, whose normal
  is vertical and pushes no slide joint, so such a contact is made inactive (infinite
  distance); MuJoCo lets a ball that deep pass through the wall, and so does this.
  """
  corner = jnp.clip(jnp.round(pos - (1 - BODY_REST + CELL_HALF)), 0, 3).astype(jnp.int32)
  boxes = jnp.asarray(_CONTACT_BOXES, jnp.float32)[
      jnp.asarray(_CORNER_WALLS)[corner[0], corner[1]]]               # (C, 2)
  delta = pos - boxes
  excess = jnp.abs(delta) - CELL_HALF                                 # per-axis gap to the box
  outside = jnp.maximum(excess, 0.0)
  out_sq = jnp.sum(outside ** 2, -1)
  is_out = out_sq > 0
  out_len = jnp.sqrt(jnp.where(is_out, out_sq, 1.0))
  normal_out = jnp.sign(delta) * outside / out_len[:, None]
  face = jnp.argmax(excess, -1)                                       # least-penetrated axis
  normal_in = jnp.sign(delta) * jax.nn.one_hot(face, 2, dtype=delta.dtype)
  depth_in = jnp.max(excess, -1)
  depth_in = jnp.where(depth_in > -WALL_HEIGHT, depth_in, jnp.inf)    # the top face wins ties
  dist = jnp.where(is_out, out_len, depth_in) - BALL_RADIUS
  normal = jnp.where(is_out[:, None], normal_out, normal_in)
  return dist, normal


def _impedance(dist):
  """MuJoCo's solimp impedance of a contact at signed distance `dist` (below the margin)."""
  dmin, dmax, width, mid, power = SOLIMP
  x = jnp.clip(jnp.abs(dist - CONTACT_MARGIN) / width, 0.0, 1.0)
  low = x ** power / mid ** (power - 1)
  high = 1.0 - (1.0 - x) ** power / (1.0 - mid) ** (power - 1)
  return dmin + jnp.where(x <= mid, low, high) * (dmax - dmin)


# All 2**C active sets of the contacts: row s says which contacts set s treats as active.
_ACTIVE_SETS = np.array(list(itertools.product((0.0, 1.0), repeat=NUM_CONTACTS)), np.float32)


def _constrained_acceleration(pos, vel, accel_free):
  """The acceleration (2,) MuJoCo's constraint solver returns for the wall contacts.

  Minimises `0.5 m |a - a0|^2 + sum_c 0.5 D_c min(0, n_c.a - aref_c)^2` over a (2,) (D = 1/R)
  by solving it on every active set in closed form and keeping the cheapest candidate.
  """
  dist, normal = _contacts(pos)
  active = dist < CONTACT_MARGIN
  imp = _impedance(dist)
  timeconst, dampratio = SOLREF
  dmax = SOLIMP[1]
  stiffness = 1.0 / (dmax * dmax * timeconst * timeconst * dampratio * dampratio)
  damping = 2.0 / (dmax * timeconst)
  aref = -damping * (normal @ vel) - stiffness * imp * (dist - CONTACT_MARGIN)   # (C,)
  precision = jnp.where(active, imp / ((1.0 - imp) / MASS), 0.0)              # D = 1/R

  weights = jnp.asarray(_ACTIVE_SETS) * precision                             # (S, C)
  outer = normal[:, :, None] * normal[:, None, :]                             # (C, 2, 2)
  hessian = MASS * jnp.eye(2) + jnp.einsum('sc,cij->sij', weights, outer)     # (S, 2, 2)
  rhs = MASS * accel_free + jnp.einsum('sc,c,ci->si', weights, aref, normal)  # (S, 2)
  det = hessian[:, 0, 0] * hessian[:, 1, 1] - hessian[:, 0, 1] * hessian[:, 1, 0]
  cand = jnp.stack([hessian[:, 1, 1] * rhs[:, 0] - hessian[:, 0, 1] * rhs[:, 1],
                    hessian[:, 0, 0] * rhs[:, 1] - hessian[:, 1, 0] * rhs[:, 0]], -1)
  cand = cand / det[:, None]                                                  # (S, 2)
  violation = jnp.minimum(cand @ normal.T - aref, 0.0)                        # (S, C)
  cost = (0.5 * MASS * jnp.sum((cand - accel_free) ** 2, -1)
          + 0.5 * jnp.sum(precision * violation ** 2, -1))
  return cand[jnp.argmin(cost)]


def _physics_step(pos, vel, force):
  """One MuJoCo Euler step (TIMESTEP) with implicit joint damping."""
  accel_free = (force - DAMPING * vel) / MASS
  accel = _constrained_acceleration(pos, vel, accel_free)
  vel = vel + TIMESTEP * MASS * accel / (MASS + TIMESTEP * DAMPING)
  return pos + TIMESTEP * vel, vel


def step(state, action):
  """One env step: clip the action to [-1, 1] and the velocity to +-5, then 5 physics steps.

  Args:
    state: f32 (4,) `[x, y, vx, vy]` (slide-joint positions, velocities).
    action: f32 (2,) motor controls (clipped to [-1, 1]; force = 100 * control).
  Returns:
    f32 (4,) the next state.
  """
  state = _check_last(state, 4, 'point_maze state')
  action = _check_last(action, 2, 'point_maze action')
  if state.ndim != 1 or action.ndim != 1:
    raise ValueError(f'point_maze step takes state (4,) and action (2,); got {state.shape} and '
                     f'{action.shape} (vmap it for batches)')
  force = GEAR * jnp.clip(action, -1.0, 1.0)
  pos, vel = state[:2], jnp.clip(state[2:], -VELOCITY_LIMIT, VELOCITY_LIMIT)
  for _ in range(PHYSICS_STEPS):   # unrolled: 2.5x faster than a fori_loop on CPU
    pos, vel = _physics_step(pos, vel, force)
  return jnp.concatenate([pos, vel])


# ----------------------------------------------------------------------------------------------
# Rendering


def _pixel_scale(size, height):
  """Pixels per unit length of a horizontal plane at `height` (z) seen by the camera."""
  return (size / 2) / ((CAMERA_DISTANCE - height) * CAMERA_TAN_HALF_FOVY)


def _specular(n_dot_h):
  return SPECULAR * np.maximum(n_dot_h, 0.0) ** SHININESS


def _half_vector_z(x, y, height):
  """z component of the unit half vector between the light (straight up: the headlight looks
  straight down) and the direction from the point (x, y, height) to the camera."""
  view = np.stack([LOOK_AT - x, LOOK_AT - y, np.broadcast_to(CAMERA_DISTANCE - height, x.shape)])
  view = view / np.linalg.norm(view, axis=0)
  half = view + np.array([0.0, 0.0, 1.0])[:, None, None]
  return half[2] / np.linalg.norm(half, axis=0)


def _in_walls(x, y):
  """bool: the state-coordinate points (x, y) lie in a wall cell of the maze."""
  walls = np.array([[c == '#' for c in row] for row in U_MAZE])
  i = np.floor(x + BODY_REST - 1 + CELL_HALF).astype(int)     # cell i spans world i + 1 +- 0.5
  j = np.floor(y + BODY_REST - 1 + CELL_HALF).astype(int)
  inside = (i >= 0) & (i < walls.shape[0]) & (j >= 0) & (j < walls.shape[1])
  return inside & walls[np.clip(i, 0, walls.shape[0] - 1), np.clip(j, 0, walls.shape[1] - 1)]


@functools.lru_cache(maxsize=8)
def _static_layers(size):
  """Float32 layers of the scene without the ball, supersampled and box-filtered in numpy.

  Returns (under (size, size, 3) floor and wall sides in [0, 255], tops (size, size, 3) the wall
  tops premultiplied by their coverage, top_alpha (size, size, 1) wall-top coverage).
  """
  ss = SUPERSAMPLE
  coords = (np.arange(size * ss) + 0.5) / ss - size / 2          # sample offsets from the centre
  u, v = np.meshgrid(coords, coords)                               # u: right (x), v: down (-y)

  def plane(height):
    scale = _pixel_scale(size, height)
    return LOOK_AT + u / scale, LOOK_AT - v / scale

  tx, ty = plane(WALL_HEIGHT)
  top = _in_walls(tx, ty)
  shade = DIFFUSE + AMBIENT
  top_rgb = (np.array(WALL_RGB)[:, None, None] * shade
             + _specular(_half_vector_z(tx, ty, WALL_HEIGHT))) * 255.0
  fx, fy = plane(FLOOR_Z)
  side = _in_walls(fx, fy) & ~top          # between the top edge and the floor: a side face
  wx, wy = fx + BODY_REST, fy + BODY_REST  # world coordinates (the checker is world-aligned)
  dark = (np.floor(wx / CHECKER) + np.floor(wy / CHECKER)) % 2 == 0
  floor_rgb = np.where(dark, np.array(FLOOR_DARK)[:, None, None],
                       np.array(FLOOR_LIGHT)[:, None, None]).astype(np.float64)
  side_rgb = np.array(WALL_RGB)[:, None, None] * AMBIENT * 255.0
  under = np.where(side, side_rgb, floor_rgb)

  def box_filter(img):                      # (C, H*ss, W*ss) -> (H, W, C) mean per pixel
    return img.reshape(img.shape[0], size, ss, size, ss).mean((2, 4)).transpose(1, 2, 0)

  top_alpha = box_filter(top[None].astype(np.float64))
  tops = box_filter(top_rgb * top)
  return (box_filter(under).astype(np.float32), tops.astype(np.float32),
          top_alpha.astype(np.float32))


@functools.lru_cache(maxsize=8)
def _background(size):
  under, tops, top_alpha = _static_layers(size)
  return np.clip(np.round(under * (1 - top_alpha) + tops), 0, 255).astype(np.uint8)


def render(state, size=224):
  """Top-down RGB frame of the maze with the ball at `state[:2]`.

  Args:
    state: f32 (4,) (only x, y are drawn; vmap for batches).
    size: static int, image side in pixels (the reference renders 224).
  Returns:
    uint8 (size, size, 3); row 0 is the top (largest y), column 0 the left (smallest x).
  """
  if not isinstance(size, (int, np.integer)) or size < 8:
    raise ValueError(f'render size must be a Python int >= 8 (static); got {size!r}')
  state = _check_last(state, 4, 'point_maze state')
  if state.ndim != 1:
    raise ValueError(f'point_maze render takes one state (4,); got {state.shape} (vmap it)')
  size = int(size)
  under, tops, top_alpha = (jnp.asarray(a) for a in _static_layers(size))
  scale = _pixel_scale(size, 0.0)           # the site sphere's centre is at z = 0
  radius = SITE_RADIUS * scale
  patch = int(math.ceil(2 * radius)) + 4
  centre_u = size / 2 + (state[0] - LOOK_AT) * scale   # pixel-edge coordinates
  centre_v = size / 2 - (state[1] - LOOK_AT) * scale
  u0 = jnp.clip(jnp.floor(centre_u - patch / 2), 0, size - patch).astype(jnp.int32)
  v0 = jnp.clip(jnp.floor(centre_v - patch / 2), 0, size - patch).astype(jnp.int32)
  offsets = jnp.arange(patch, dtype=jnp.float32) + 0.5
  du, dv = jnp.meshgrid(u0 + offsets - centre_u, v0 + offsets - centre_v)  # (P, P) from centre
  r = jnp.sqrt(du ** 2 + dv ** 2)
  coverage = jnp.clip(radius - r + 0.5, 0.0, 1.0)[..., None]
  rho = jnp.minimum(r / radius, 1.0)
  nz = jnp.sqrt(1.0 - rho ** 2)
  normal = jnp.stack([du / radius, -dv / radius, nz], -1)
  view = jnp.stack([LOOK_AT - state[0], LOOK_AT - state[1], CAMERA_DISTANCE])
  half = view / jnp.linalg.norm(view) + jnp.array([0.0, 0.0, 1.0])
  n_dot_h = normal @ (half / jnp.linalg.norm(half))
  ball = (jnp.asarray(BALL_RGB) * (AMBIENT + DIFFUSE * nz[..., None])
          + SPECULAR * jnp.maximum(n_dot_h, 0.0)[..., None] ** SHININESS) * 255.0

  def window(layer):
    return jax.lax.dynamic_slice(layer, (v0, u0, 0), (patch, patch, layer.shape[-1]))

  alpha = window(top_alpha)
  local = (window(under) * (1 - coverage) + ball * coverage) * (1 - alpha) + window(tops)
  local = jnp.clip(jnp.round(local), 0, 255).astype(jnp.uint8)
  return jax.lax.dynamic_update_slice(jnp.asarray(_background(size)), local, (v0, u0, 0))


# ----------------------------------------------------------------------------------------------
# Episodes, data policy, task


def _in_u_region(x, y):
  """The reference's validity test of a start/goal position (closed and open bounds as there)."""
  sides = ((SAMPLE_LOW <= x <= SIDE_HIGH) or (TOP_LOW <= x <= SAMPLE_HIGH)) and (
      SAMPLE_LOW <= y <= SAMPLE_HIGH)
  top = (SIDE_HIGH < x < TOP_LOW) and (TOP_LOW <= y <= SAMPLE_HIGH)
  return sides or top


def reference_start_goal(seed):
  """The reference's `sample_random_init_goal_states(seed)`: (start (4,), goal (4,)) float64.

  With `rs = np.random.RandomState(seed)`, each state draws `x, y ~ U[0.5, 3.1]` (x first) until
  they lie in the U region, then `vx, vy ~ U[-5.2262554, 5.2262554]`; start first, then goal.
  """
  rs = np.random.RandomState(seed)

  def draw():
    while True:
      x, y = rs.uniform(SAMPLE_LOW, SAMPLE_HIGH), rs.uniform(SAMPLE_LOW, SAMPLE_HIGH)
      if _in_u_region(x, y):
        break
    vx = rs.uniform(-VELOCITY_RANGE, VELOCITY_RANGE)
    vy = rs.uniform(-VELOCITY_RANGE, VELOCITY_RANGE)
    return np.array([x, y, vx, vy])

  start = draw()
  return start, draw()


def _uniform_in_boxes(key, boxes):
  """A point uniform in a union of disjoint boxes `[(x0, x1, y0, y1), ...]`: f32 (2,)."""
  boxes = np.asarray(boxes, np.float64)
  areas = (boxes[:, 1] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 2])
  u = jax.random.uniform(key, (3,), jnp.float32)
  b = jnp.sum(u[0] >= jnp.asarray(np.cumsum(areas)[:-1] / areas.sum(), jnp.float32))
  lo = jnp.asarray(boxes[:, [0, 2]], jnp.float32)[b]
  hi = jnp.asarray(boxes[:, [1, 3]], jnp.float32)[b]
  return lo + (hi - lo) * u[1:]


# The reference's start/goal region (rejection sampling keeps exactly this union).
_EPISODE_BOXES = ((SAMPLE_LOW, SIDE_HIGH, SAMPLE_LOW, SAMPLE_HIGH),
                  (TOP_LOW, SAMPLE_HIGH, SAMPLE_LOW, SAMPLE_HIGH),
                  (SIDE_HIGH, TOP_LOW, TOP_LOW, SAMPLE_HIGH))


def _cell_span(index):
  """(low, high) state coordinates a ball centre can take inside cell `index` of one axis."""
  centre = index + 1 - BODY_REST
  return centre - CELL_HALF + BALL_RADIUS, centre + CELL_HALF - BALL_RADIUS


def _free_boxes():
  """Where the ball centre can be, as (x0, x1, y0, y1) boxes: the two arms of the U (x cells 1
  and 3, y cells 1 to 3) and the bridge between them (x cell 2, y cell 3). (This leaves out
  only the two 0.002-area pockets that the round ball reaches at the middle wall's corners.)"""
  (left0, left1), (right0, right1) = _cell_span(1), _cell_span(3)
  (y0, _), (top0, y1) = _cell_span(1), _cell_span(3)
  return ((left0, left1, y0, y1), (right0, right1, y0, y1), (left1, right0, top0, y1))


FREE_BOXES = _free_boxes()


def _random_velocity(key):
  return jax.random.uniform(key, (2,), jnp.float32, -VELOCITY_RANGE, VELOCITY_RANGE)


def _state_in(key, boxes):
  key_pos, key_vel = jax.random.split(key)
  return jnp.concatenate([_uniform_in_boxes(key_pos, boxes), _random_velocity(key_vel)])


def sample_start_goal(key):
  """The reference's episode distribution with jax.random: (start f32 (4,), goal f32 (4,)).

  Position uniform in the U region (what the rejection sampling accepts), velocities uniform
  in +-5.2262554; start and goal independent.
  """
  key_start, key_goal = jax.random.split(key)
  return _state_in(key_start, _EPISODE_BOXES), _state_in(key_goal, _EPISODE_BOXES)


def random_state(key):
  """A data-collection start: xy uniform where the ball fits (FREE_BOXES), velocities uniform
  in +-5.2262554 as in the evaluation draws. f32 (4,)."""
  return _state_in(key, FREE_BOXES)


def collect_actions(key, start, length):
  """DINO-WM's PointMaze data policy: i.i.d. uniform controls in [-1, 1]. f32 (length, 2).

  (`start` is unused: the policy does not look at the states.)"""
  del start
  if not isinstance(length, (int, np.integer)) or length < 1:
    raise ValueError(f'collect_actions length must be a positive Python int; got {length!r}')
  return jax.random.uniform(key, (int(length), 2), jnp.float32, -1.0, 1.0)


def _xy_distance(state, goal):
  return jnp.linalg.norm(goal[..., :2] - state[..., :2], axis=-1)


def is_success(state, goal):
  """bool (...): the ball is strictly within 0.5 of the goal position (velocities ignored)."""
  return _xy_distance(state, goal) < SUCCESS_RADIUS


def oracle_cost(state, goal):
  """f32 (...): squared xy distance to the goal."""
  return jnp.sum(jnp.square(goal[..., :2] - state[..., :2]), axis=-1)


# The ball centre's (x, y) at the frame's edges (its plane, z = 0, seen by the camera).
_HALF_VIEW = CAMERA_DISTANCE * CAMERA_TAN_HALF_FOVY
PLOT_EXTENT = (LOOK_AT - _HALF_VIEW, LOOK_AT + _HALF_VIEW, LOOK_AT - _HALF_VIEW,
               LOOK_AT + _HALF_VIEW)

ENV = base.Environment(
    name='point_maze',
    state_dim=4,
    action_dim=2,
    proprio_dim=4,
    frameskip=FRAMESKIP,
    episode_steps=EPISODE_STEPS,
    step=step,
    render=render,
    proprio=lambda state: state,
    is_success=is_success,
    distance=_xy_distance,
    sample_start_goal=sample_start_goal,
    random_state=random_state,
    collect_actions=collect_actions,
    probe_targets=lambda state: state[..., :2],
    oracle_cost=oracle_cost,
    reference_start_goal=reference_start_goal,
    probe_target_names=('x', 'y'),
    distance_unit='m',
    plot_extent=PLOT_EXTENT,
)
