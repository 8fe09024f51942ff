"""TFDS builder `wall_trajectories`: random-walk DotWall trajectories stored as ArrayRecord.

One example per trajectory of `L` env steps (REFERENCE §6):
  observations  uint8 (L+1, S, S, 3)   rendered frames, frame t shows position t (zlib-compressed:
                                       the frames are mostly white)
  actions       f32   (L, 2)           raw env actions; action t moves position t -> t+1
  proprio       f32   (L+1, 2)         = position (x=column, y=row) in grid pixels
Splits `train` and `validation`. Trajectories are simulated and rendered in JAX (jit + vmap over
trajectories, in chunks of bounded memory). Trajectory `i` of a split depends only on
(seed, split, i), never on the chunking.

The dataset lives in `dataset_dir(data_dir, data_config, seed)`
(`<data_dir>/wall_trajectories/<config name>/<version>`) and is complete only when TFDS has
renamed its `incomplete.*` folder into place AND `stats.json` (normalisation stats of the train
split, jepa_jax.data.stats) has been written; `generate` writes both and is a no-op on a
complete dataset. TensorFlow is not needed (ArrayRecord + numpy data sources).
"""

import dataclasses
import functools
import os
import time
from typing import Any, Iterator, Mapping

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
import tensorflow_datasets as tfds

from jepa_jax.data import stats as stats_lib
from jepa_jax.envs import wall

SPLITS = ('train', 'validation')
# Upper bound on the rendered uint8 frames of one generation chunk; float intermediates of the
# renderer are a few times larger, so peak memory stays around 1 GB whatever the image size.
_CHUNK_BYTES = 128 * 2**20


@dataclasses.dataclass(frozen=True)
class WallDataConfig:
  """The `data` section of experiments/configs/wall.py.

  image_size, trajectory_length and the trajectory counts define the dataset; frameskip,
  num_hist and num_pred tell the loaders how to slice clips (num_hist + num_pred frames every
  frameskip env steps).
  """
  image_size: int
  num_train_trajectories: int
  num_validation_trajectories: int
  trajectory_length: int
  frameskip: int = 5
  num_hist: int = 3
  num_pred: int = 1

  def __post_init__(self):
    for name in ('image_size', 'num_train_trajectories', 'num_validation_trajectories',
                 'trajectory_length', 'frameskip', 'num_hist', 'num_pred'):
      if int(getattr(self, name)) < 1:
        raise ValueError(f'data.{name} must be >= 1, got {getattr(self, name)}')

  def num_trajectories(self, split: str) -> int:
    if split not in SPLITS:
      raise ValueError(f'unknown split {split!r}; choose one of {SPLITS}')
    return {'train': self.num_train_trajectories,
            'validation': self.num_validation_trajectories}[split]


def as_data_config(data_config: Any) -> WallDataConfig:
  """WallDataConfig from a ConfigDict, dict or WallDataConfig (unknown keys raise TypeError)."""
  if isinstance(data_config, WallDataConfig):
    return data_config
  if hasattr(data_config, 'to_dict'):
    data_config = data_config.to_dict()
  return WallDataConfig(**dict(data_config))


@dataclasses.dataclass(kw_only=True, eq=False)
class WallTrajectoriesConfig(tfds.core.BuilderConfig):
  """Builder config: everything that changes the stored examples."""
  image_size: int = 64
  trajectory_length: int = 60
  num_train_trajectories: int = 500
  num_validation_trajectories: int = 50
  seed: int = 0


def builder_config(data_config: Any, seed: int) -> WallTrajectoriesConfig:
  """The builder config for a `data` config section and seed; its name is the dataset folder."""
  c = as_data_config(data_config)
  name = (f'px{c.image_size}_len{c.trajectory_length}_train{c.num_train_trajectories}'
          f'_val{c.num_validation_trajectories}_seed{seed}')
  return WallTrajectoriesConfig(
      name=name,
      description=(f'{c.num_train_trajectories} train / {c.num_validation_trajectories} '
                   f'validation random-walk trajectories of {c.trajectory_length} steps, '
                   f'{c.image_size} px frames, seed {seed}'),
      image_size=c.image_size, trajectory_length=c.trajectory_length,
      num_train_trajectories=c.num_train_trajectories,
      num_validation_trajectories=c.num_validation_trajectories, seed=int(seed))


# ----------------------------------------------------------------------------- simulation


def trajectory_keys(seed: int, split: str, indices: np.ndarray) -> jax.Array:
  """PRNG keys (N,) of the trajectories `indices` of `split`."""
  split_key = jax.random.fold_in(jax.random.key(seed), SPLITS.index(split))
  return jax.vmap(lambda i: jax.random.fold_in(split_key, i))(jnp.asarray(indices, jnp.uint32))


@functools.partial(jax.jit, static_argnums=1)
def simulate(keys: jax.Array, trajectory_length: int) -> tuple[jax.Array, jax.Array]:
  """Random-walk trajectories: keys (N,) -> (actions f32 (N, L, 2), positions f32 (N, L+1, 2))."""
  def one(key):
    start_key, walk_key = jax.random.split(key)
    start = wall.random_start(start_key)
    actions = wall.random_walk_actions(walk_key, trajectory_length, start)
    return actions, wall.rollout(start, actions)
  return jax.vmap(one)(keys)


@functools.partial(jax.jit, static_argnums=1)
def render_frames(positions: jax.Array, image_size: int) -> jax.Array:
  """positions f32 (N, T, 2) -> frames uint8 (N, T, S, S, 3) (wall.render is elementwise)."""
  return wall.render(positions, image_size)


def _chunk_size(config: WallTrajectoriesConfig) -> int:
  """Trajectories per generation chunk: bounded by _CHUNK_BYTES of frames, and the same for
  both splits so that `simulate` (slow to compile) compiles once."""
  per_trajectory = (config.trajectory_length + 1) * config.image_size ** 2 * 3
  largest_split = max(config.num_train_trajectories, config.num_validation_trajectories)
  return max(1, min(largest_split, _CHUNK_BYTES // per_trajectory))


def simulate_split(config: WallTrajectoriesConfig, split: str
                   ) -> Iterator[tuple[int, np.ndarray, np.ndarray, jax.Array]]:
  """Yields (first index, actions (C, L, 2), positions (C, L+1, 2), positions on device).

  Every chunk is simulated at the full chunk size (the last one padded by repeating its last
  trajectory, then cut), so the numbers never depend on where a chunk ends; the same chunks
  serve rendering and the normalisation stats.
  """
  count = {'train': config.num_train_trajectories,
           'validation': config.num_validation_trajectories}[split]
  chunk = _chunk_size(config)
  for first in range(0, count, chunk):
    real = min(chunk, count - first)
    indices = first + np.minimum(np.arange(chunk), real - 1)
    actions, positions = simulate(trajectory_keys(config.seed, split, indices),
                                  config.trajectory_length)
    yield first, np.asarray(actions)[:real], np.asarray(positions)[:real], positions[:real]


def train_stats(config: WallTrajectoriesConfig) -> dict:
  """Per-dimension mean/std (ddof=0) of raw actions and proprio over the train split."""
  action_moments, proprio_moments = stats_lib.MomentAccumulator(2), stats_lib.MomentAccumulator(2)
  for _, actions, positions, _ in simulate_split(config, 'train'):
    action_moments.add(actions)
    proprio_moments.add(positions)
  action_mean, action_std = action_moments.mean_std()
  proprio_mean, proprio_std = proprio_moments.mean_std()
  return dict(action_mean=action_mean, action_std=action_std, proprio_mean=proprio_mean,
              proprio_std=proprio_std, num_trajectories=config.num_train_trajectories,
              split='train')


# ----------------------------------------------------------------------------- TFDS builder


class WallTrajectories(tfds.core.GeneratorBasedBuilder):
  """DotWall random-walk trajectories (REFERENCE §6); build with `generate`."""

  VERSION = tfds.core.Version('1.1.0')
  RELEASE_NOTES = {
      '1.0.0': 'Random-walk DotWall trajectories rendered in JAX.',
      '1.1.0': 'Walks keep pushing into walls (reference random walk; no heading reversal).',
  }

  def __init__(self, *, config: WallTrajectoriesConfig, data_dir: str, **kwargs):
    super().__init__(config=config, data_dir=data_dir, file_format='array_record', **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    c = self.builder_config
    s, steps = c.image_size, c.trajectory_length
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__.splitlines()[0],
        features=tfds.features.FeaturesDict({
            'observations': tfds.features.Tensor(
                shape=(steps + 1, s, s, 3), dtype=np.uint8,
                encoding=tfds.features.Encoding.ZLIB),
            'actions': tfds.features.Tensor(shape=(steps, 2), dtype=np.float32),
            'proprio': tfds.features.Tensor(shape=(steps + 1, 2), dtype=np.float32),
        }),
        # Example i of a split is trajectory i: keep generation order.
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    return {split: self._generate_examples(split) for split in SPLITS}

  def _generate_examples(self, split: str):
    c = self.builder_config
    for first, actions, positions, device_positions in simulate_split(c, split):
      frames = np.asarray(render_frames(device_positions, c.image_size))
      logging.info('wall_trajectories %s: rendered trajectories %d..%d', split, first,
                   first + len(actions) - 1)
      for j in range(len(actions)):
        yield first + j, {'observations': frames[j], 'actions': actions[j],
                          'proprio': positions[j]}


# ----------------------------------------------------------------------------- entry points


def dataset_dir(data_dir: str, data_config: Any, seed: int) -> str:
  """Folder of the dataset that `generate(data_dir, data_config, seed)` writes."""
  config = builder_config(data_config, seed)
  return os.path.join(os.fspath(data_dir), WallTrajectories.name, config.name,
                      str(WallTrajectories.VERSION))


def is_complete(path: str) -> bool:
  """True when TFDS finished writing `path` and its stats.json exists."""
  return (os.path.isfile(os.path.join(path, 'dataset_info.json'))
          and os.path.isfile(os.path.join(path, stats_lib.STATS_FILENAME)))


def generate(data_dir: str, data_config: Any, seed: int) -> str:
  """Generates the dataset (no-op when complete) and its train stats; returns its folder.

  Call it from one process only (multi-host jobs: process 0, then a barrier); the readers
  are safe to use from every process.

  An interruption leaves either TFDS's `incomplete.*` folder (ignored, regenerated next time)
  or a dataset without stats.json (stats are recomputed next time); neither counts as complete.
  """
  config = builder_config(data_config, seed)
  path = dataset_dir(data_dir, data_config, seed)
  if is_complete(path):
    logging.info('dataset already complete at %s', path)
    return path
  start = time.time()
  builder = WallTrajectories(config=config, data_dir=os.fspath(data_dir))
  builder.download_and_prepare()
  if os.path.realpath(os.fspath(builder.data_dir)) != os.path.realpath(path):
    raise RuntimeError(f'TFDS wrote {builder.data_dir}, expected {path}')
  stats_lib.write_stats(path, train_stats(config))
  logging.info('generated %s in %.1f s', path, time.time() - start)
  return path


def open_builder(path: str) -> tfds.core.DatasetBuilder:
  """Read-only TFDS builder of a complete dataset folder, with a clear error otherwise."""
  path = os.fspath(path)
  if not is_complete(path):
    state = 'is incomplete' if os.path.isdir(path) else 'does not exist'
    raise ValueError(
        f'Wall dataset {path} {state}: run `python -m experiments.generate_data '
        '--config=experiments/configs/wall.py:<variant> --workdir=...` to generate it')
  return tfds.builder_from_directory(path)


def trajectory_length(builder: tfds.core.DatasetBuilder) -> int:
  """Env steps L per trajectory of a built dataset (its frames number L+1)."""
  return int(builder.info.features['actions'].shape[0])


def load_trajectories(path: str, split: str, max_count: int | None = None
                      ) -> dict[str, np.ndarray]:
  """Whole trajectories of a split, stacked: observations uint8 (N, L+1, S, S, 3),
  actions f32 (N, L, 2), proprio f32 (N, L+1, 2); the first `max_count` (all if None)."""
  if split not in SPLITS:
    raise ValueError(f'unknown split {split!r}; choose one of {SPLITS}')
  source = open_builder(path).as_data_source(split)
  count = len(source) if max_count is None else min(int(max_count), len(source))
  examples = [source[i] for i in range(count)]
  return {k: np.stack([e[k] for e in examples]) for k in ('observations', 'actions', 'proprio')}


def describe(path: str) -> Mapping[str, Any]:
  """Split sizes and bytes on disk of a dataset folder (for progress reports)."""
  size = sum(os.path.getsize(os.path.join(root, f))
             for root, _, files in os.walk(path) for f in files)
  builder = open_builder(path)
  return {'path': path, 'bytes': size,
          **{split: builder.info.splits[split].num_examples for split in SPLITS}}
