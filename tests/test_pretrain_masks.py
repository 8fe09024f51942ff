"""Multi-block 3D masks: box geometry, fixed counts, disjointness, grain integration."""

import grain
import numpy as np
import pytest

from jepa_jax.pretrain import masks


def test_block_shape_matches_closed_form():
  # 14x14 plane, scale 0.15 -> area 29.4 tokens; aspect fixed at 1 -> 5x5; full 8 tubelets.
  spec = masks.MaskGroupSpec(num_blocks=1, spatial_scale=0.15, aspect_ratio=(1.0, 1.0))
  assert masks.sample_block_shape(spec, (8, 14, 14), np.random.default_rng(0)) == (8, 5, 5)
  # Aspect 1.5 (height / width): h = round(sqrt(29.4 * 1.5)) = 7, w = round(sqrt(29.4 / 1.5)) = 4.
  spec = masks.MaskGroupSpec(num_blocks=1, spatial_scale=0.15, aspect_ratio=(1.5, 1.5),
                             temporal_scale=0.5)
  assert masks.sample_block_shape(spec, (8, 14, 14), np.random.default_rng(0)) == (4, 7, 4)
  # scale 0.7 on a 4x4 plane: sqrt(11.2) -> 3, and a box never spans a whole side.
  spec = masks.MaskGroupSpec(num_blocks=1, spatial_scale=1.0, aspect_ratio=(1.0, 1.0))
  assert masks.sample_block_shape(spec, (2, 4, 4), np.random.default_rng(0)) == (2, 3, 3)


@pytest.mark.parametrize('grid', [(2, 4, 4), (2, 8, 8), (8, 14, 14)])
def test_group_indices_fixed_disjoint_and_full_temporal(grid):
  rng = np.random.default_rng(1)
  num_t, num_h, num_w = grid
  for spec in masks.DEFAULT_MASK_GROUPS:
    num_context, num_target = masks.mask_token_counts(spec, grid)
    assert num_context >= 1 and num_target >= 1
    for _ in range(20):
      context, target = masks.sample_group_indices(spec, grid, num_context, num_target, rng)
      assert context.shape == (num_context,) and target.shape == (num_target,)
      assert context.dtype == np.int32 and target.dtype == np.int32
      assert np.all(np.diff(context) > 0) and np.all(np.diff(target) > 0)  # sorted, unique
      assert context.min() >= 0 and max(context.max(), target.max()) < num_t * num_h * num_w
      # Every box spans the whole clip, so a spatial position is all-target or all-context.
      context_hw = set((context % (num_h * num_w)).tolist())
      target_hw = set((target % (num_h * num_w)).tolist())
      assert not context_hw & target_hw


def test_target_mask_is_union_of_full_clip_boxes():
  spec = masks.MaskGroupSpec(num_blocks=3, spatial_scale=0.1)
  rng = np.random.default_rng(2)
  for _ in range(50):
    target = masks.sample_target_mask(spec, (4, 10, 10), rng)
    assert target.shape == (4, 10, 10)
    assert np.all(target == target[:1])  # full temporal extent
    # area 10 tokens, aspect in [0.75, 1.5]: boxes are at most 4x4 (h,w <= round(sqrt(15))).
    assert 1 <= target[0].sum() <= 3 * 16


def test_counts_give_high_acceptance():
  grid = (2, 8, 8)
  for spec in masks.DEFAULT_MASK_GROUPS:
    num_context, num_target = masks.mask_token_counts(spec, grid, quantile=0.1, seed=3)
    rng = np.random.default_rng(4)
    sizes = np.array([masks.sample_target_mask(spec, grid, rng).sum() for _ in range(1000)])
    accepted = np.mean((128 - sizes >= num_context) & (sizes >= num_target))
    assert accepted > 0.7


def test_transform_in_grain_pipeline_is_seeded_and_batched():
  grid = (2, 4, 4)
  counts = [masks.mask_token_counts(g, grid) for g in masks.DEFAULT_MASK_GROUPS]
  transform = masks.MultiBlockMaskTransform(grid, masks.DEFAULT_MASK_GROUPS, counts)

  def batches(seed):
    ds = grain.MapDataset.source([{'x': np.float32(i)} for i in range(8)])
    return list(ds.random_map(transform, seed=seed).batch(4))

  first, again, other = batches(0), batches(0), batches(1)
  batch = first[0]
  assert batch['x'].shape == (4,)
  assert len(batch['masks']) == 2
  for group, (num_context, num_target) in zip(batch['masks'], counts):
    assert group['context_idx'].shape == (4, num_context)
    assert group['target_idx'].shape == (4, num_target)
  for a, b in zip(first, again):
    np.testing.assert_array_equal(a['masks'][0]['context_idx'], b['masks'][0]['context_idx'])
  assert any(not np.array_equal(a['masks'][1]['target_idx'], b['masks'][1]['target_idx'])
             for a, b in zip(first, other))


def test_bad_inputs_raise():
  with pytest.raises(ValueError, match='spatial_scale'):
    masks.MaskGroupSpec(num_blocks=2, spatial_scale=1.5)
  with pytest.raises(ValueError, match='one \\(num_context, num_target\\) per mask group'):
    masks.MultiBlockMaskTransform((2, 4, 4), masks.DEFAULT_MASK_GROUPS, [(2, 3)])
  with pytest.raises(ValueError, match='bad mask counts'):
    masks.MultiBlockMaskTransform((2, 4, 4), masks.DEFAULT_MASK_GROUPS[:1], [(20, 20)])
  with pytest.raises(ValueError, match='lower the counts'):
    masks.sample_group_indices(masks.DEFAULT_MASK_GROUPS[1], (2, 4, 4), 30, 1,
                               np.random.default_rng(0), max_draws=5)


@pytest.mark.parametrize('grid,context_frames', [((4, 8, 8), 1), ((4, 8, 8), 2), ((4, 1, 1), 1)])
def test_predictive_group_context_is_the_first_frames_and_targets_come_later(grid, context_frames):
  spec = masks.MaskGroupSpec(num_blocks=2, spatial_scale=0.7, context_frames=context_frames)
  num_context, num_target = masks.mask_token_counts(spec, grid)
  per_frame = grid[1] * grid[2]
  assert num_context == context_frames * per_frame  # every token of the context frames
  rng = np.random.default_rng(2)
  for _ in range(20):
    context, target = masks.sample_group_indices(spec, grid, num_context, num_target, rng)
    np.testing.assert_array_equal(context, np.arange(context_frames * per_frame))
    assert target.min() >= context_frames * per_frame and target.max() < np.prod(grid)


def test_predictive_group_without_frames_to_predict_is_one_line():
  spec = masks.MaskGroupSpec(num_blocks=1, spatial_scale=0.5, context_frames=2)
  with pytest.raises(ValueError, match='context_frames=2 leaves no tubelet to predict'):
    masks.mask_token_counts(spec, (2, 4, 4))
