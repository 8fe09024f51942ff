"""Frames from other programs brought to the dataset's convention: uint8 `(..., S, S, 3)`.

The resize is the one every environment's `render` applies after drawing at its native size
(docs/reference.md §2): bilinear on float32 pixels, no antialiasing, rounded and clipped to
uint8. A frame already at the target size is returned unchanged, so an exported copy of our own
data comes back bit for bit.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np


@functools.partial(jax.jit, static_argnums=1)
def _resize(frames: jax.Array, shape: tuple) -> jax.Array:
  resized = jax.image.resize(frames.astype(jnp.float32), shape, 'bilinear', antialias=False)
  return jnp.clip(jnp.round(resized), 0, 255).astype(jnp.uint8)


def to_uint8_rgb(frames: np.ndarray, what: str) -> np.ndarray:
  """`(..., H, W, 3)` frames as uint8: uint8 passes, floats must hold whole values in [0, 255].

  Raises ValueError (one line naming `what`) for another channel count, a non-numeric dtype or
  float pixels outside [0, 255] (frames in [0, 1] are a different convention: scale them).
  """
  frames = np.asarray(frames)
  if frames.ndim < 3 or frames.shape[-1] != 3:
    raise ValueError(f'{what} has shape {frames.shape}; expected (..., H, W, 3) RGB frames')
  if frames.dtype == np.uint8:
    return frames
  if frames.dtype.kind not in 'uif':
    raise ValueError(f'{what} has dtype {frames.dtype}; expected uint8 RGB pixels')
  low, high = float(frames.min(initial=0)), float(frames.max(initial=0))
  if low < 0 or high > 255:
    raise ValueError(f'{what} holds pixel values in [{low:g}, {high:g}]; expected [0, 255]')
  if frames.dtype.kind == 'f' and high <= 1.0 and frames.size > 0 and np.any(frames % 1):
    raise ValueError(f'{what} holds float pixels in [0, 1]; multiply by 255 first')
  return np.round(frames).astype(np.uint8)


def resize_frames(frames: np.ndarray, size: int, what: str = 'frames') -> np.ndarray:
  """uint8 `(..., H, W, 3)` square frames -> uint8 `(..., size, size, 3)` (module docstring)."""
  frames = to_uint8_rgb(frames, what)
  height, width = frames.shape[-3:-1]
  if height != width:
    raise ValueError(f'{what} are {height} x {width} pixels; only square frames are supported '
                     '(crop them to a square first)')
  if height == size:
    return frames
  return np.asarray(_resize(jnp.asarray(frames), frames.shape[:-3] + (size, size, 3)))
