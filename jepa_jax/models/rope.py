"""3D rotary position embedding (RoPE) over (frame, row, column) token positions.

Used by the V-JEPA 2 encoder, the AdaLN (JEPA-WM) and V-JEPA 2-AC predictors (docs/reference.md §3a):

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


def rope_tables(positions, head_dim: int, *, layout: str = 'reference',
                theta: float = 10000.0):
  """cos/sin tables of 3D RoPE over whole heads, so that `rope(x) = x * cos + pair_swap(x) * sin`.

  Args:
    positions: `(..., N, 3)` integer (frame, row, column). A numpy array gives numpy float32
      tables computed in float64 at trace time (jit constants: nothing is recomputed per call);
      a jax array gives jax float32 tables.
    head_dim: per-head width; dims beyond `3 * axis_dim(head_dim)` get cos = 1, sin = 0.
    layout, theta: see the module docstring.
  Returns:
    `(cos, sin)`, each `(..., N, head_dim)`.
  """
  _check_layout(layout)
  d = axis_dim(head_dim)
  if d == 0:
    raise ValueError(f'head_dim {head_dim} too small for 3D RoPE (needs head_dim >= 6)')
  if positions.shape[-1] != 3 or positions.ndim not in (2, 3):
    raise ValueError(f'RoPE positions must be (N, 3) or (B, N, 3), got {positions.shape}')
  xp, dtype = (np, np.float64) if isinstance(positions, np.ndarray) else (jnp, jnp.float32)
  omega = frequencies(d, theta)  # (d/2,)
  # 'reference': element j uses omega[j mod d/2]; 'interleaved': omega[j // 2].
  omega = np.concatenate([omega, omega]) if layout == 'reference' else np.repeat(omega, 2)
  pos = positions.astype(dtype)
  angle = xp.concatenate([pos[..., a:a + 1] * omega.astype(dtype) for a in range(3)], axis=-1)
  pad = [(0, 0)] * (angle.ndim - 1) + [(0, head_dim - 3 * d)]
  cos = xp.pad(xp.cos(angle), pad, constant_values=1.0)
  sin = xp.pad(xp.sin(angle), pad, constant_values=0.0)
  return cos.astype(xp.float32), sin.astype(xp.float32)


def pair_swap(x: jnp.ndarray, rotated_dims: int) -> jnp.ndarray:
  """`rot(x)` on the first `rotated_dims` (even) channels: `[2i] = -x[2i+1]`, `[2i+1] = x[2i]`;
  the remaining channels are passed through (their sin is 0)."""
  head, tail = x[..., :rotated_dims], x[..., rotated_dims:]
  pairs = head.reshape(head.shape[:-1] + (rotated_dims // 2, 2))
  swapped = jnp.stack([-pairs[..., 1], pairs[..., 0]], axis=-1).reshape(head.shape)
  return jnp.concatenate([swapped, tail], axis=-1)


def apply_tables(x: jnp.ndarray, cos, sin) -> jnp.ndarray:
  """`x * cos + pair_swap(x) * sin` for `x (..., head_dim)` and tables broadcastable to it."""
  rotated = 3 * axis_dim(x.shape[-1])
  cos, sin = jnp.asarray(cos, x.dtype), jnp.asarray(sin, x.dtype)
  return x * cos + pair_swap(x, rotated) * sin


def apply_rope3d(x: jnp.ndarray, positions, *, layout: str = 'reference',
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
  cos, sin = rope_tables(positions, x.shape[-1], layout=layout, theta=theta)
  return apply_tables(x, cos[..., None, :], sin[..., None, :])  # broadcast over heads


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
