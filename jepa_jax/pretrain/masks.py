"""Multi-block 3D masks for V-JEPA pretraining, with fixed token counts.

A clip is tokenised into a grid of `(T', H', W')` tubelet tokens, flattened row-major
(index = (t * H' + h) * W' + w, the order `ViTEncoder(token_indices=...)` expects).
One *mask group* places `num_blocks` boxes on that grid; each box covers a fraction
`spatial_scale` of the `H' x W'` plane with aspect ratio (height / width) drawn from
`aspect_ratio`, and `round(temporal_scale * T')` consecutive tubelets. The *target* of the
group is the union of its boxes; the *context* is the complement (docs/reference.md §1).

Predictive ("causal") groups, `context_frames = k > 0` (V-JEPA's causal multi-block masks with
`max_temporal_keep`): the context is every token of the first k tubelets and the boxes are
placed in the later ones only, so the predictor must say where things will be from where they
were. With the reference's masks (k = 0) every box spans all frames, and a moving object that
is masked in one frame is masked in all (docs/reference.md §10).

Fixed counts (so the train step compiles once): every group has a fixed number of context
tokens `num_context` and target tokens `num_target`. We use **deterministic truncation**,
no padding: a draw whose context has fewer than `num_context` tokens or whose target has
fewer than `num_target` tokens is rejected and redrawn; an accepted draw keeps a random
subset (from the same seeded generator) of exactly `num_context` context and `num_target`
target tokens, returned sorted. Dropped tokens are neither context nor target, as with the
reference's truncate-to-shortest-in-batch. `mask_token_counts` picks the counts as
low quantiles of the count distributions, so few draws are rejected.

Masks are made on the host inside the grain pipeline (`MultiBlockMaskTransform`, a
`grain.transforms.RandomMap`), so they are seeded, reproducible and checkpointed with the
data iterator, and the device never waits for them.
"""

import dataclasses
import math
from typing import Sequence

import grain
import numpy as np


@dataclasses.dataclass(frozen=True)
class MaskGroupSpec:
  """One mask group: `num_blocks` boxes of the given spatial / temporal extent.

  Attributes:
    num_blocks: boxes per clip (their union is the target).
    spatial_scale: fraction of the `H' x W'` token plane covered by one box, in (0, 1].
    aspect_ratio: (low, high) range of box height / width, drawn uniformly per box.
    temporal_scale: fraction of the tubelets a box may occupy (all `T'`, or the `T' - k` after
      the context) covered by one box, in (0, 1].
    context_frames: k > 0 makes the group predictive: context = the first k tubelets, boxes
      only in the later ones; 0 = the reference's multi-block group.
  """
  num_blocks: int
  spatial_scale: float
  aspect_ratio: tuple[float, float] = (0.75, 1.5)
  temporal_scale: float = 1.0
  context_frames: int = 0

  def __post_init__(self):
    if self.num_blocks < 1:
      raise ValueError(f'MaskGroupSpec.num_blocks must be >= 1, got {self.num_blocks}')
    if not 0.0 < self.spatial_scale <= 1.0:
      raise ValueError(f'MaskGroupSpec.spatial_scale must be in (0, 1], got {self.spatial_scale}')
    if not 0.0 < self.temporal_scale <= 1.0:
      raise ValueError(
          f'MaskGroupSpec.temporal_scale must be in (0, 1], got {self.temporal_scale}')
    if self.context_frames < 0:
      raise ValueError(f'MaskGroupSpec.context_frames must be >= 0, got {self.context_frames}')
    low, high = self.aspect_ratio
    if not 0.0 < low <= high:
      raise ValueError(f'MaskGroupSpec.aspect_ratio must be 0 < low <= high, got {self.aspect_ratio}')


# V-JEPA / V-JEPA 2 defaults: 8 small boxes and 2 large boxes, each over the whole clip.
DEFAULT_MASK_GROUPS = (
    MaskGroupSpec(num_blocks=8, spatial_scale=0.15),
    MaskGroupSpec(num_blocks=2, spatial_scale=0.7),
)


def _check_grid(grid, spec: MaskGroupSpec | None = None):
  if len(grid) != 3 or min(grid) < 1:
    raise ValueError(f'token grid must be 3 positive ints (T\', H\', W\'), got {grid}')
  if spec is not None and spec.context_frames >= grid[0]:
    raise ValueError(f'mask group context_frames={spec.context_frames} leaves no tubelet to '
                     f'predict on a grid of {grid[0]} tubelets; use fewer context frames or '
                     'longer clips (pretrain.num_frames)')


def sample_block_shape(spec: MaskGroupSpec, grid: Sequence[int],
                       rng: np.random.Generator) -> tuple[int, int, int]:
  """Draws one box shape `(t, h, w)` in tokens for a `(T', H', W')` grid.

  `h = round(sqrt(area * ar))`, `w = round(sqrt(area / ar))` with `area = spatial_scale * H'W'`,
  each at least 1 and, as in the reference, strictly smaller than the grid side when the side
  exceeds 1 (so some context survives); `t = max(1, round(temporal_scale * T'))`.
  """
  num_t, num_h, num_w = grid
  area = spec.spatial_scale * num_h * num_w
  ar = rng.uniform(*spec.aspect_ratio)  # uniform in the range, as the reference draws it
  h = int(round(math.sqrt(area * ar)))
  w = int(round(math.sqrt(area / ar)))
  h = min(max(h, 1), max(num_h - 1, 1))
  w = min(max(w, 1), max(num_w - 1, 1))
  t = max(1, int(round(spec.temporal_scale * num_t)))
  return t, h, w


def sample_target_mask(spec: MaskGroupSpec, grid: Sequence[int],
                       rng: np.random.Generator) -> np.ndarray:
  """Union of `spec.num_blocks` randomly placed boxes: bool `(T', H', W')`, True = target
  (only in tubelets `>= spec.context_frames`)."""
  _check_grid(grid, spec)
  num_t, num_h, num_w = grid
  first = spec.context_frames
  target = np.zeros(grid, dtype=bool)
  for _ in range(spec.num_blocks):
    t, h, w = sample_block_shape(spec, (num_t - first, num_h, num_w), rng)
    t0 = first + rng.integers(0, num_t - first - t + 1)
    h0 = rng.integers(0, num_h - h + 1)
    w0 = rng.integers(0, num_w - w + 1)
    target[t0:t0 + t, h0:h0 + h, w0:w0 + w] = True
  return target


def _context(spec: MaskGroupSpec, target: np.ndarray) -> np.ndarray:
  """Context of a `(T', H', W')` target mask: its complement, or for a predictive group every
  token of the first `context_frames` tubelets (flattened, bool)."""
  if spec.context_frames:
    context = np.zeros_like(target)
    context[:spec.context_frames] = True
    return context.reshape(-1)
  return ~target.reshape(-1)


def mask_token_counts(spec: MaskGroupSpec, grid: Sequence[int], *, quantile: float = 0.1,
                      num_draws: int = 2000, seed: int = 0) -> tuple[int, int]:
  """Fixed `(num_context, num_target)` for a group: low quantiles of the drawn counts.

  Both are at least 1. A draw is accepted when its context has `>= num_context` and its
  target `>= num_target` tokens; at least about a fraction `1 - 2 * quantile` of draws is
  accepted. A predictive group's context is fixed: all tokens of its context frames.
  """
  if not 0.0 <= quantile < 0.5:
    raise ValueError(f'mask count quantile must be in [0, 0.5), got {quantile}')
  rng = np.random.default_rng(seed)
  targets = [sample_target_mask(spec, grid, rng) for _ in range(num_draws)]
  target_sizes = np.array([t.sum() for t in targets])
  context_sizes = np.array([_context(spec, t).sum() for t in targets])
  if context_sizes.max() < 1:
    raise ValueError(
        f'mask group {spec} leaves no context on token grid {tuple(grid)}; use smaller '
        'blocks (spatial_scale / num_blocks) or a finer grid')
  num_context = max(1, int(np.floor(np.quantile(context_sizes, quantile))))
  num_target = max(1, int(np.floor(np.quantile(target_sizes, quantile))))
  return num_context, num_target


def sample_group_indices(spec: MaskGroupSpec, grid: Sequence[int], num_context: int,
                         num_target: int, rng: np.random.Generator,
                         max_draws: int = 1000) -> tuple[np.ndarray, np.ndarray]:
  """Context and target token indices of one group with fixed counts.

  Returns:
    context_idx int32 `(num_context,)`, target_idx int32 `(num_target,)`: sorted, disjoint
    flat indices into the `(T', H', W')` grid.
  """
  for _ in range(max_draws):
    target = sample_target_mask(spec, grid, rng)
    target_idx = np.flatnonzero(target)
    context_idx = np.flatnonzero(_context(spec, target))
    if len(context_idx) >= num_context and len(target_idx) >= num_target:
      context_idx = np.sort(rng.choice(context_idx, num_context, replace=False))
      target_idx = np.sort(rng.choice(target_idx, num_target, replace=False))
      return context_idx.astype(np.int32), target_idx.astype(np.int32)
  raise ValueError(
      f'no mask of group {spec} on grid {tuple(grid)} had >= {num_context} context and '
      f'>= {num_target} target tokens in {max_draws} draws; lower the counts '
      '(see mask_token_counts)')


class MultiBlockMaskTransform(grain.transforms.RandomMap):
  """grain per-example transform adding the multi-block masks of every group.

  Adds `element['masks']`: a tuple with one dict per group,
  `{'context_idx': int32 (Kc_g,), 'target_idx': int32 (Kt_g,)}` (batched by grain to
  `(B, Kc_g)` / `(B, Kt_g)`). The element is otherwise unchanged.
  """

  def __init__(self, grid: Sequence[int], groups: Sequence[MaskGroupSpec],
               counts: Sequence[tuple[int, int]]):
    _check_grid(grid)
    if len(groups) != len(counts):
      raise ValueError(f'need one (num_context, num_target) per mask group: got '
                       f'{len(counts)} counts for {len(groups)} groups')
    num_tokens = int(np.prod(grid))
    for spec, (num_context, num_target) in zip(groups, counts):
      if num_context < 1 or num_target < 1 or num_context + num_target > num_tokens:
        raise ValueError(f'bad mask counts ({num_context}, {num_target}) for group {spec} '
                         f'on a grid of {num_tokens} tokens')
    self.grid = tuple(int(g) for g in grid)
    self.groups = tuple(groups)
    self.counts = tuple((int(c), int(t)) for c, t in counts)

  def random_map(self, element, rng: np.random.Generator):
    masks = []
    for spec, (num_context, num_target) in zip(self.groups, self.counts):
      context_idx, target_idx = sample_group_indices(spec, self.grid, num_context, num_target,
                                                     rng)
      masks.append({'context_idx': context_idx, 'target_idx': target_idx})
    return {**element, 'masks': tuple(masks)}
