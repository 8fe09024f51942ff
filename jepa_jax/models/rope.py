"""3D rotary position embedding (RoPE) over (frame, row, column) token positions.

Used by the V-JEPA 2 encoder, the AdaLN (JEPA-WM) and V-JEPA 2-AC predictors (REFERENCE §3a):

* Each head of width `head_dim` is split into three rotated slices of width
  `d = axis_dim(head_dim) = 2 * ((head_dim // 3) // 2)`: dims `[0, d)` rotate by the frame index,
  `[d, 2d)` by the patch row, `[2d, 3d)` by the patch column; dims `[3d, head_dim)` are left alone.
* Frequencies `w_k = theta ** (-k / (d / 2))` for `k < d / 2` (theta = 10000).
* Positions are integer token coordinates; they restart at 0 in every context window (the caller
  builds them from the window it feeds, see `grid_positions`).

Two table layouts (`layout` argument):

* `'reference'` (default, reproduces the published code so converted checkpoints match): the
  cos/sin tables are the half-tables *concatenated*, `[th_0..th_{d/2-1}, th_0..th_{d/2-1}]`
  (element j uses `th_{j mod d/2}`), while the rotated partner is the *interleaved* pair:
  `out = x * cos + rot(x) * sin` with `rot(x)[2i] = -x[2i+1]`, `rot(x)[2i+1] = x[2i]`.
  The two elements of a pair then see different angles, so this is not a rotation and does not
  preserve norms.
* `'interleaved'` (clean): element j uses `th_{j // 2}`, so each pair `(x_{2i}, x_{2i+1})` is
  rotated by the angle `pos * w_i` (a true rotation; norms are preserved, and
  `<rope(q, m), rope(k, n)>` depends only on `m - n`).

Position 0 gives cos = 1, sin = 0, i.e. the identity in both layouts; V-JEPA 2-AC relies on this
for condition tokens (frame position only, row = column = 0).
"""

import jax.numpy as jnp
import numpy as np

ROPE_LAYOUTS = ('reference', 'interleaved')


def axis_dim(head_dim: int) -> int:
  """Width of the slice of a head rotated by one axis: `2 * ((head_dim // 3) // 2)`."""
  return 2 * ((head_dim // 3) // 2)


def frequencies(dim: int, theta: float = 10000.0) -> np.ndarray:
  """`(dim // 2,)` float64 angular frequencies `theta ** (-k / (dim / 2))`."""
  k = np.arange(dim // 2, dtype=np.float64)
  return theta ** (-k / (dim / 2.0))


def _check_layout(layout: str) -> None:
  if layout not in ROPE_LAYOUTS:
    raise ValueError(f'unknown RoPE layout {layout!r}; choose one of {ROPE_LAYOUTS}')


def rotate_1d(x: jnp.ndarray, pos: jnp.ndarray, *, layout: str = 'reference',
              theta: float = 10000.0) -> jnp.ndarray:
  """Rotates the last axis of `x` (even width d) by scalar positions.

  Args:
    x: `(..., d)` queries or keys (any float dtype; the result keeps it).
    pos: positions broadcastable to `x.shape[:-1]` (int or float).
    layout: 'reference' (concatenated tables, the published quirk) or 'interleaved'.
    theta: frequency base.
  Returns:
    `(..., d)` rotated array.
  """
  _check_layout(layout)
  d = x.shape[-1]
  if d % 2:
    raise ValueError(f'RoPE slice width must be even, got {d}')
  omega = jnp.asarray(frequencies(d, theta), jnp.float32)  # (d/2,)
  if layout == 'reference':
    omega = jnp.concatenate([omega, omega])  # element j uses omega[j mod d/2]
  else:
    omega = jnp.repeat(omega, 2)  # element j uses omega[j // 2]
  angle = jnp.asarray(pos, jnp.float32)[..., None] * omega  # (..., d), float32 for accuracy
  cos, sin = jnp.cos(angle).astype(x.dtype), jnp.sin(angle).astype(x.dtype)
  pairs = x.reshape(x.shape[:-1] + (d // 2, 2))
  rotated = jnp.stack([-pairs[..., 1], pairs[..., 0]], axis=-1).reshape(x.shape)
  return x * cos + rotated * sin


def apply_rope3d(x: jnp.ndarray, positions: jnp.ndarray, *, layout: str = 'reference',
                 theta: float = 10000.0) -> jnp.ndarray:
  """Applies 3D RoPE to per-head queries or keys.

  Args:
    x: `(B, N, heads, head_dim)` queries or keys.
    positions: `(N, 3)` or `(B, N, 3)` integer (frame, row, column) of every token.
    layout: see module docstring.
    theta: frequency base.
  Returns:
    `(B, N, heads, head_dim)`; dims beyond `3 * axis_dim(head_dim)` unchanged.
  """
  head_dim = x.shape[-1]
  d = axis_dim(head_dim)
  if d == 0:
    raise ValueError(f'head_dim {head_dim} too small for 3D RoPE (needs head_dim >= 6)')
  if positions.shape[-1] != 3 or positions.ndim not in (2, 3):
    raise ValueError(f'RoPE positions must be (N, 3) or (B, N, 3), got {positions.shape}')
  pos = positions[..., None, :]  # broadcast over heads: (.., N, 1, 3)
  parts = [rotate_1d(x[..., a * d:(a + 1) * d], pos[..., a], layout=layout, theta=theta)
           for a in range(3)]
  parts.append(x[..., 3 * d:])
  return jnp.concatenate(parts, axis=-1)


def grid_positions(num_frames: int, height: int, width: int) -> np.ndarray:
  """`(T*H*W, 3)` int32 (frame, row, column) of a row-major token grid, frames from 0."""
  t, r, c = np.meshgrid(np.arange(num_frames), np.arange(height), np.arange(width),
                        indexing='ij')
  return np.stack([t, r, c], axis=-1).reshape(-1, 3).astype(np.int32)


def positions_from_indices(indices: jnp.ndarray, grid: tuple[int, int, int]) -> jnp.ndarray:
  """Maps flat row-major token indices `(..., K)` on grid `(T, H, W)` to `(..., K, 3)` int32."""
  _, height, width = grid
  indices = jnp.asarray(indices, jnp.int32)
  frame = indices // (height * width)
  row = (indices // width) % height
  col = indices % width
  return jnp.stack([frame, row, col], axis=-1)
