"""Grain pipeline: environment trajectories -> batches of normalised clips for stages 1 and 2.

Records: every (trajectory, clip start) pair of a split is one record, as in the reference's
trajectory slicer, so one epoch visits every clip once. A clip of `num_frames` frames every
`frameskip` env steps starting at step t0 shows frames t0 + i*frameskip (i < num_frames) and
carries the `num_frames * frameskip` raw actions t0 .. t0 + num_frames*frameskip - 1; frame i's
model action is the concatenation of its `frameskip` z-scored actions, `(n f) d -> n (f d)`.
Hence t0 ranges over 0 .. L - num_frames*frameskip.

Order: records are sharded first (strided, every shard gets the same count), then shuffled per
shard with `seed` (a new permutation each epoch), then read; so the stream is a pure function of
(dataset, seed, shard) and the iterator state is just a position (grain get_state/set_state,
orbax via grain.checkpoint.CheckpointSave/CheckpointRestore).
"""

from typing import Any, Sequence

import grain
import numpy as np

from jepa_jax.data import stats as stats_lib
from jepa_jax.data import trajectories


class ClipReader(grain.transforms.Map):
  """Record index -> one normalised clip (see module docstring).

  Output: observations uint8 (T, S, S, 3), actions f32 (T, frameskip*A) (z-scored),
  proprio f32 (T, P) (z-scored), states f32 (T, state_dim) (raw simulator states: for probes
  only, never a model input).
  """

  def __init__(self, source: Sequence[dict], num_starts: int, num_frames: int, frameskip: int,
               stats: dict[str, np.ndarray]):
    self._source = source
    self._num_starts = num_starts
    self._num_frames = num_frames
    self._frameskip = frameskip
    self._stats = stats

  def map(self, index: int) -> dict[str, np.ndarray]:
    trajectory, start = divmod(int(index), self._num_starts)
    example = self._source[trajectory]
    frames = start + self._frameskip * np.arange(self._num_frames)
    raw_actions = example['actions'][start:start + self._num_frames * self._frameskip]
    actions = (raw_actions - self._stats['action_mean']) / self._stats['action_std']
    proprio = example['proprio'][frames]
    return {
        'observations': example['observations'][frames],
        'actions': actions.reshape(self._num_frames, -1).astype(np.float32),
        'proprio': ((proprio - self._stats['proprio_mean'])
                    / self._stats['proprio_std']).astype(np.float32),
        'states': example['states'][frames].astype(np.float32),
    }


class RelabelledSource:
  """A data source whose trajectories from `first` on carry `actions[i - first]` (raw (M, L, A))
  in place of their stored actions: the labelled trajectories, then M pseudo-labelled ones."""

  def __init__(self, source: Sequence[dict], first: int, actions: np.ndarray):
    if first + len(actions) > len(source):
      raise ValueError(f'{len(actions)} relabelled trajectories after the first {first} exceed '
                       f'the split\'s {len(source)}')
    self._source, self._first, self._actions = source, first, actions

  def __len__(self) -> int:
    return self._first + len(self._actions)

  def __getitem__(self, index: int) -> dict:
    example = self._source[index]
    if index < self._first:
      return example
    actions = self._actions[index - self._first]
    if actions.shape != example['actions'].shape:
      raise ValueError(f'relabelled actions of shape {actions.shape} for trajectory {index}, '
                       f'whose stored actions are {example["actions"].shape}')
    return {**example, 'actions': actions}


def num_clip_starts(trajectory_length: int, num_frames: int, frameskip: int) -> int:
  """Clip start offsets per trajectory of `trajectory_length` env steps."""
  if num_frames < 1 or frameskip < 1:
    raise ValueError(f'num_frames ({num_frames}) and frameskip ({frameskip}) must be >= 1')
  needed = num_frames * frameskip
  if needed > trajectory_length:
    raise ValueError(
        f'clips of num_frames={num_frames} every frameskip={frameskip} steps need '
        f'{needed} actions but trajectories have trajectory_length={trajectory_length}; '
        'use fewer/closer frames or regenerate with a longer data.trajectory_length')
  return trajectory_length - needed + 1


def _transform_seed(seed: int, shard_index: int, position: int) -> int:
  # Distinct random streams per shard and per transform (grain seeds by element index, which
  # repeats across shards).
  return int(np.random.SeedSequence([seed, shard_index, position]).generate_state(1)[0])


def labeled_trajectories(config: Any, split: str = 'train') -> int:
  """How many of the split's trajectories carry action labels: the first
  `config.labeled_fraction` of the training split (at least one); every validation trajectory.

  Stage 1 trains on the frames of every trajectory; stage 2 and LeWM, which read actions,
  train on these only (the label-efficiency setting). The dataset's action normalisation
  statistics still come from the whole training split.
  """
  data_cfg = trajectories.as_data_config(config.data)
  fraction = float(config.get('labeled_fraction', 1.0))
  if not 0.0 < fraction <= 1.0:
    raise ValueError(f'labeled_fraction={fraction} must be in (0, 1] (the fraction of training '
                     'trajectories with action labels)')
  if split != 'train':
    return data_cfg.num_trajectories(split)
  return max(1, round(fraction * data_cfg.num_train_trajectories))


def make_clip_loader(dataset_dir: str, split: str, *, batch_size: int, num_frames: int,
                     frameskip: int, seed: int, shuffle: bool = True,
                     num_epochs: int | None = None, shard_index: int = 0, shard_count: int = 1,
                     extra_transforms: Sequence[Any] = (), drop_remainder: bool = True,
                     worker_count: int = 0, read_threads: int = 2,
                     num_trajectories: int | None = None,
                     relabelled_actions: np.ndarray | None = None) -> grain.DatasetIterator:
  """Checkpointable iterator over batches of clips.

  Args:
    dataset_dir: a complete dataset folder (trajectories.dataset_dir / generate).
    split: 'train' or 'validation'.
    batch_size: per-shard (per-host) batch size B.
    num_frames, frameskip: clip of T = num_frames frames every `frameskip` env steps.
    seed: shuffling and random-transform seed.
    num_epochs: None repeats forever.
    shard_index, shard_count: this host's shard; shards are disjoint and of equal size (the
      last `records % shard_count` records are dropped).
    extra_transforms: grain.transforms.Map / RandomMap applied per clip, in order, before
      batching.
    worker_count: grain worker processes (0 = read in this process, with `read_threads`
      prefetch threads). Workers read grain's absl flags, so they need parsed flags (any
      absl app has them; elsewhere call `absl.flags.FLAGS.mark_as_parsed()`).
    num_trajectories: only the split's first this many trajectories (None: all), e.g. the
      action-labelled part (`labeled_trajectories`).
    relabelled_actions: raw actions (M, L, A) of the M trajectories after those, which are read
      too, with these actions in place of their stored ones (stage 2's pseudo labels,
      `world_model.pseudo_labels`).

  Returns:
    Iterator of {'observations': uint8 (B, T, S, S, 3), 'actions': f32 (B, T, frameskip*A),
    'proprio': f32 (B, T, P), 'states': f32 (B, T, state_dim)}; get_state()/set_state() resume it
    exactly.
  """
  if split not in trajectories.SPLITS:
    raise ValueError(f'unknown split {split!r}; choose one of {trajectories.SPLITS}')
  if not 0 <= shard_index < shard_count:
    raise ValueError(f'shard_index={shard_index} must be in [0, shard_count={shard_count})')
  if batch_size < 1:
    raise ValueError(f'batch_size must be >= 1, got {batch_size}')
  builder = trajectories.open_builder(dataset_dir)
  num_starts = num_clip_starts(trajectories.trajectory_length(builder), num_frames, frameskip)
  source = builder.as_data_source(split)
  used = len(source) if num_trajectories is None else min(int(num_trajectories), len(source))
  if relabelled_actions is not None:
    source = RelabelledSource(source, used, relabelled_actions)
    used = len(source)
  per_shard = used * num_starts // shard_count
  if per_shard < (batch_size if drop_remainder else 1):
    raise ValueError(
        f'shard {shard_index}/{shard_count} of split {split!r} has {per_shard} clips, fewer '
        f'than batch_size={batch_size}; use a smaller batch or more trajectories')

  dataset = grain.MapDataset.range(used * num_starts)
  dataset = dataset[shard_index::shard_count][:per_shard]
  if shuffle:
    dataset = dataset.shuffle(seed=seed)
  dataset = dataset.repeat(num_epochs)
  dataset = dataset.map(ClipReader(source, num_starts, num_frames, frameskip,
                                   stats_lib.load_stats(dataset_dir)))
  for position, transform in enumerate(extra_transforms):
    if isinstance(transform, grain.transforms.RandomMap):
      dataset = dataset.random_map(
          transform, seed=_transform_seed(seed, shard_index, position))
    elif isinstance(transform, grain.transforms.Map):
      dataset = dataset.map(transform)
    else:
      raise ValueError(
          f'extra_transforms[{position}] is a {type(transform).__name__}; expected a '
          'grain.transforms.Map or grain.transforms.RandomMap')
  iter_dataset = dataset.to_iter_dataset(grain.ReadOptions(
      num_threads=read_threads, prefetch_buffer_size=max(2 * batch_size, read_threads)))
  iter_dataset = iter_dataset.batch(batch_size, drop_remainder=drop_remainder)
  if worker_count > 0:
    iter_dataset = iter_dataset.mp_prefetch(
        grain.MultiprocessingOptions(num_workers=worker_count))
  return iter(iter_dataset)
