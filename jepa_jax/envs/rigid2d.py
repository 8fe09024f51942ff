"""A small planar contact solver in pure JAX: one compound rigid body of boxes, pushed by a
kinematic disc, inside straight walls. It follows Chipmunk 2D (the engine behind pymunk) step
for step and carries what Chipmunk carries between steps (`Body`), so that it reproduces pymunk
scenes such as the reference's Push-T from any state pymunk can be in.

Chipmunk's step (`cpSpaceStep`), specialised to this scene (`substep`):
  1. the pose moves by the velocity and the bias velocity that the last step's solve left
     (the disc has moved by its own velocity before, as Chipmunk moves every body first);
  2. contacts are found on the new poses: disc vs each box (one point each, the closest
     points), and every box vertex against every wall (a wall is the inner face of a pymunk
     segment: its line moved in by the segment's radius), active where the signed distance is
     <= 0;
  3. velocities decay by `damping ** dt`; this solver models pymunk's damping 0 only (Push-T),
     where the body restarts every step from rest (quasi-static): the velocity carried over
     only moves the pose in 1.;
  4. warm start: contacts that were touching in the last step start from their accumulated
     impulse. (Chipmunk also keeps the impulses of a pair of shapes that stopped touching for
     up to 3 steps; reproducing that changed no measured step, so it is left out);
  5. `iterations` rounds of sequential impulses (projected Gauss-Seidel on the contacts'
     coupling matrix, which is what sequential impulses on one body amount to): per contact, a
     normal impulse that cancels the normal relative velocity (restitution 0) and a separate
     bias impulse that pushes penetration deeper than `slop` apart at the rate
     `bias_coef / dt`; both accumulated impulses are clamped at >= 0. Friction is 0, so there
     is no tangential impulse. The result is the body's velocity and bias velocity, applied to
     the pose at the start of the next step.
Not reproduced either: the order in which Chipmunk visits its arbiters (set by its
bounding-box tree's history); here it is disc-bar, disc-stem, then the deepest wall contacts.
Gauss-Seidel's 10 rounds do not converge where the disc jams the body against a wall, so there
the order changes the result (measured in tests/test_push_t.py); with the disc alone,
even touching both boxes, the step is pymunk's to float32 rounding.

Units are those of the scene (Push-T: pixels, seconds, mass 1). Positions of the body are its
centre of gravity `cog` in world coordinates; the body frame origin is `cog - R(angle) cog_local`.
All functions are pure and jit/vmap-able; shapes below are for one scene (vmap for batches).
"""

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

# Wall contacts kept per substep, the deepest ones: a block lying flat against a wall or resting
# in a corner touches with 2 to 4 vertices; a block jammed deeper loses its shallowest contacts.
MAX_WALL_CONTACTS = 4


def polygon_moment(mass, vertices):
  """Moment of inertia of a uniform polygon about the origin of its vertex coordinates.

  The standard shoelace formula (it is what pymunk.moment_for_poly computes; note that it is about
  the vertices' origin, not about the polygon's centroid). vertices: (V, 2) in order. Float64.
  """
  v = np.asarray(vertices, np.float64)
  w = np.roll(v, -1, axis=0)
  cross = v[:, 0] * w[:, 1] - v[:, 1] * w[:, 0]
  dots = np.sum(v * v, 1) + np.sum(v * w, 1) + np.sum(w * w, 1)
  return float(mass * np.sum(cross * dots) / (6.0 * np.sum(cross)))


@dataclasses.dataclass(frozen=True)
class Scene:
  """Static description of the scene (Python numbers and numpy arrays only; hashable by id).

  box_corners: (B, 4, 2) corners of each box in the body frame, in order around the box.
  cog_local: (2,) centre of gravity in the body frame.
  mass, moment: the body's mass and moment of inertia about its centre of gravity.
  disc_radius: radius of the kinematic disc.
  wall_normals: (W, 2) unit normals pointing into the workspace; wall_offsets: (W,) such that the
    free side of wall w is `normal . x >= offset` (pymunk: segment line + its radius).
  dt: substep length (s); iterations: solver rounds; slop: penetration left uncorrected;
  collision_bias: fraction of penetration left after 1 s (pymunk's `collision_bias`).
  """
  box_corners: np.ndarray
  cog_local: np.ndarray
  mass: float
  moment: float
  disc_radius: float
  wall_normals: np.ndarray
  wall_offsets: np.ndarray
  dt: float = 0.01
  iterations: int = 10
  slop: float = 0.1
  collision_bias: float = (1.0 - 0.1) ** 60

  def __post_init__(self):
    if not (self.mass > 0 and self.moment > 0 and self.disc_radius > 0 and self.dt > 0):
      raise ValueError(f'Scene needs mass, moment, disc_radius and dt > 0; got {self}')
    if not np.allclose(np.linalg.norm(self.wall_normals, axis=1), 1.0):
      raise ValueError(f'Scene wall_normals must be unit vectors; got {self.wall_normals}')

  @property
  def num_contacts(self):
    """Slots of the contact cache: one per box for the disc, then one per (box, vertex, wall)."""
    num_boxes = self.box_corners.shape[0]
    return num_boxes + num_boxes * 4 * self.wall_normals.shape[0]


def rotation(angle):
  """f32 (2, 2) rotation matrix of `angle` (rad, counter-clockwise in x-right/y-down = clockwise
  on screen, as in pymunk with pygame's y-down screen)."""
  c, s = jnp.cos(angle), jnp.sin(angle)
  return jnp.stack([jnp.stack([c, -s]), jnp.stack([s, c])])


def _cross(a, b):
  return a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]


def world_corners(scene, cog, angle):
  """f32 (B, 4, 2) box corners in world coordinates for the body at `cog` (2,), `angle` ()."""
  rot = rotation(angle)
  local = jnp.asarray(scene.box_corners - scene.cog_local, jnp.float32)
  return cog + jnp.einsum('ij,bvj->bvi', rot, local)


def disc_box_contacts(scene, disc_pos, cog, angle):
  """Closest points between the disc and each box (Chipmunk's circle-poly collision).

  Returns, per box (B,): normal (B, 2) from the disc to the box, signed distance (B,) between the
  surfaces (< 0: overlap) and the contact point on the box (B, 2), all in world coordinates.
  Outside a box the normal is the direction from the disc centre to its closest point; with the
  centre inside, it is minus the outward normal of the nearest face.
  """
  rot = rotation(angle)
  corners = jnp.asarray(scene.box_corners, jnp.float32)
  centre_local = corners.mean(1)                                         # (B, 2) body frame
  half = 0.5 * (corners.max(1) - corners.min(1))                         # axis-aligned boxes
  origin = cog - rot @ jnp.asarray(scene.cog_local, jnp.float32)
  q = (disc_pos - origin) @ rot - centre_local                           # disc in box frames
  closest = jnp.clip(q, -half, half)
  gap = closest - q
  outside_dist = jnp.linalg.norm(gap, axis=-1)
  outside = outside_dist > 0
  normal_out = gap / jnp.where(outside, outside_dist, 1.0)[:, None]
  depth = half - jnp.abs(q)                                              # (B, 2), > 0 inside
  axis = jnp.argmin(depth, -1)
  face = jax.nn.one_hot(axis, 2, dtype=jnp.float32)
  sign = jnp.where(q >= 0, 1.0, -1.0)
  normal_in = -face * sign
  closest_in = jnp.where(face > 0, sign * half, q)
  normal = jnp.where(outside[:, None], normal_out, normal_in)
  closest = jnp.where(outside[:, None], closest, closest_in)
  dist = jnp.where(outside, outside_dist, -jnp.min(depth, -1)) - scene.disc_radius
  to_world = lambda v: v @ rot.T
  return to_world(normal), dist, origin + to_world(closest + centre_local)


def wall_contacts(scene, cog, angle):
  """Every (box, vertex, wall) pair: signed distance (B*4*W,) of the vertex to the wall's free
  side (< 0: penetration), the wall normal (B*4*W, 2) and the vertex (B*4*W, 2), world frame."""
  verts = world_corners(scene, cog, angle).reshape(-1, 2)                 # (B*4, 2)
  normals = jnp.asarray(scene.wall_normals, jnp.float32)
  dist = verts @ normals.T - jnp.asarray(scene.wall_offsets, jnp.float32)  # (B*4, W)
  num_walls = normals.shape[0]
  points = jnp.repeat(verts, num_walls, axis=0)
  return dist.reshape(-1), jnp.tile(normals, (verts.shape[0], 1)), points


class Body(NamedTuple):
  """What Chipmunk carries from one step to the next for the body (f32; `impulses` per contact
  slot of `Scene.num_contacts`, the rest as in pymunk's `Body`).

  cog: (2,) centre of gravity, world frame; angle: () rad.
  velocity: (2,) of the centre of gravity and spin: () rad/s: pymunk's `velocity` and
    `angular_velocity`, what the solver left; with damping 0 they only move the body at the
    start of the next step (then the body restarts from rest).
  bias_velocity: (2,), bias_spin (): the penetration-correcting velocity of the last solve
    (Chipmunk's `v_bias`, `w_bias`), also applied at the start of the next step only.
  impulses: (num_contacts,) accumulated normal impulse of each contact slot at the end of the
    last solve (0 where it was not touching): the next solve's warm start.
  """
  cog: jax.Array
  angle: jax.Array
  velocity: jax.Array
  spin: jax.Array
  bias_velocity: jax.Array
  bias_spin: jax.Array
  impulses: jax.Array


def substep(scene, disc_pos, disc_vel, body):
  """One Chipmunk step (pymunk's `space.step(scene.dt)`) of the body; the disc's velocity has
  been set and its position already advanced to `disc_pos` (pymunk moves it first, as below).

  Args:
    scene: `Scene` (static).
    disc_pos, disc_vel: f32 (2,) kinematic disc position and velocity (units, units/s).
    body: `Body` before the step.
  Returns:
    `Body` after the step.
  """
  dt = scene.dt
  inv_mass, inv_moment = 1.0 / scene.mass, 1.0 / scene.moment
  bias_coef = 1.0 - scene.collision_bias ** dt
  num_boxes = scene.box_corners.shape[0]
  # 1. The pose moves by the last solve's velocity plus its bias velocity.
  cog = body.cog + (body.velocity + body.bias_velocity) * dt
  angle = body.angle + (body.spin + body.bias_spin) * dt

  # 2. Contacts on the new pose.
  disc_n, disc_dist, disc_point = disc_box_contacts(scene, disc_pos, cog, angle)
  wall_dist, wall_n, wall_point = wall_contacts(scene, cog, angle)
  # Only the deepest wall contacts take part; the rest are almost always inactive.
  _, wall_idx = jax.lax.top_k(-wall_dist, MAX_WALL_CONTACTS)
  slot = jnp.concatenate([jnp.arange(num_boxes), num_boxes + wall_idx])
  normal = jnp.concatenate([disc_n, wall_n[wall_idx]])
  dist = jnp.concatenate([disc_dist, wall_dist[wall_idx]])
  point = jnp.concatenate([disc_point, wall_point[wall_idx]])
  other_vel = jnp.concatenate([jnp.broadcast_to(disc_vel, (num_boxes, 2)),
                               jnp.zeros((MAX_WALL_CONTACTS, 2), jnp.float32)])
  active = dist <= 0.0
  r = point - cog
  rn = _cross(r, normal)
  # Delassus matrix of the contacts on the one body: the normal velocity change at contact k per
  # unit impulse at contact j. Sequential impulses on a single body are projected Gauss-Seidel
  # on it; inactive contacts get no rows or columns.
  coupling = inv_mass * normal @ normal.T + inv_moment * rn[:, None] * rn[None, :]
  coupling = jnp.where(active[:, None] & active[None, :], coupling, 0.0)
  normal_mass = jnp.where(active, 1.0 / jnp.where(active, jnp.diag(coupling), 1.0), 0.0)
  # 3. Damping 0 stops the body (velocity and bias velocity restart from 0). Targets: the normal
  # impulse cancels the relative normal velocity; the bias impulse reaches the
  # penetration-correcting bias velocity.
  other_normal_speed = jnp.sum(other_vel * normal, -1)
  bias = -bias_coef * jnp.minimum(0.0, dist + scene.slop) / dt
  target = jnp.stack([other_normal_speed, bias], -1)           # (K, 2): normal, bias columns
  # 4. Warm start: contacts that were touching at the last step begin with their accumulated
  # impulse; the bias impulse always starts from 0.
  impulse = jnp.stack([jnp.where(active, body.impulses[slot], 0.0), jnp.zeros_like(dist)], -1)

  def solve_round(_, impulse):
    for k in range(normal.shape[0]):   # Gauss-Seidel in slot order, as Chipmunk's solver
      velocity = coupling[k] @ impulse                           # (2,) normal and bias rows
      new = jnp.maximum(impulse[k] + (target[k] - velocity) * normal_mass[k], 0.0)
      impulse = impulse.at[k].set(new)
    return impulse

  impulse = jax.lax.fori_loop(0, scene.iterations, solve_round, impulse)
  linear = inv_mass * impulse.T @ normal                         # (2, 2): velocity, bias rows
  angular = inv_moment * impulse.T @ rn                          # (2,)
  impulses = jnp.zeros_like(body.impulses).at[slot].set(jnp.where(active, impulse[:, 0], 0.0))
  return Body(cog, angle, linear[0], angular[0], linear[1], angular[1], impulses)
