"""TFDS builder `trajectories`: data-collection trajectories of any environment, as ArrayRecord.

One builder for every environment (`jepa_jax.envs`): the environment's collection policy
(`Environment.collect_trajectory`) is simulated and rendered in JAX (jit + vmap over
trajectories, in chunks of bounded memory). One example per trajectory of `L` env steps:
  observations  uint8 (L+1, S, S, 3)   rendered frames, frame t shows state t (zlib-compressed)
  actions       f32   (L, A)           raw env actions; action t moves state t -> t+1
  proprio       f32   (L+1, P)         `env.proprio(state)`, what a world model may read
  states        f32   (L+1, state_dim) the full simulator state: for probes and evaluation only,
                                       never a training input or target
Splits `train` and `validation`. Trajectory `i` of a split depends only on (env, seed, split, i),
never on the chunking.

The dataset lives in `dataset_dir(data_dir, env_name, data_config, seed)`
(`<data_dir>/trajectories/<env>_<config name>/<version>`) and is complete only when TFDS has
renamed its `incomplete.*` folder into place AND `stats.json` (normalisation stats of the train
split, jepa_jax.data.stats) has been written; `generate` writes both and is a no-op on a
complete dataset. TensorFlow is not needed (ArrayRecord + numpy data sources).
"""

import dataclasses
import functools
import os
import shutil
import time
from typing import Any, Iterator, Mapping

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
import tensorflow_datasets as tfds

from jepa_jax import config_sections, console, envs
from jepa_jax.data import integrity
from jepa_jax.data import stats as stats_lib
from jepa_jax.envs.base import Environment

SPLITS = ('train', 'validation')
FEATURES = ('observations', 'actions', 'proprio', 'states')
# Upper bound on the rendered uint8 frames of one generation chunk; float intermediates of the
# renderer are a few times larger, so peak memory stays around 1 GB whatever the image size.
_CHUNK_BYTES = 128 * 2**20


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """The `data` section of an experiment config; defaults are the paper's Wall values.

  image_size, trajectory_length and the trajectory counts define the dataset; frameskip,
  num_hist and num_pred tell the loaders how to slice clips (num_hist + num_pred frames every
  frameskip env steps).
  """
  image_size: int = 224
  num_train_trajectories: int = 5000
  num_validation_trajectories: int = 500
  trajectory_length: int = 100
  frameskip: int = 5
  num_hist: int = 3
  num_pred: int = 1

  def __post_init__(self):
    config_sections.require_positive(self, 'data', (
        'image_size', 'num_train_trajectories', 'num_validation_trajectories',
        'trajectory_length', 'frameskip', 'num_hist', 'num_pred'))

  def num_trajectories(self, split: str) -> int:
    if split not in SPLITS:
      raise ValueError(f'unknown split {split!r}; choose one of {SPLITS}')
    return {'train': self.num_train_trajectories,
            'validation': self.num_validation_trajectories}[split]


def as_data_config(data_config: Any) -> DataConfig:
  """DataConfig from a ConfigDict, dict or DataConfig (unknown keys raise TypeError)."""
  return config_sections.from_section(DataConfig, data_config)


@dataclasses.dataclass(kw_only=True, eq=False)
class TrajectoriesConfig(tfds.core.BuilderConfig):
  """Builder config: everything that changes the stored examples."""
  env: str = 'wall'
  image_size: int = 64
  trajectory_length: int = 60
  num_train_trajectories: int = 500
  num_validation_trajectories: int = 50
  seed: int = 0


def builder_config(env_name: str, data_config: Any, seed: int) -> TrajectoriesConfig:
  """The builder config for an environment, a `data` config section and a seed; its name is the
  dataset folder."""
  envs.get(env_name)  # a clear error for an unknown environment
  c = as_data_config(data_config)
  name = (f'{env_name}_px{c.image_size}_len{c.trajectory_length}'
          f'_train{c.num_train_trajectories}_val{c.num_validation_trajectories}_seed{seed}')
  return TrajectoriesConfig(
      name=name,
      description=(f'{env_name}: {c.num_train_trajectories} train / '
                   f'{c.num_validation_trajectories} validation trajectories of '
                   f'{c.trajectory_length} steps, {c.image_size} px frames, seed {seed}'),
      env=env_name, image_size=c.image_size, trajectory_length=c.trajectory_length,
      num_train_trajectories=c.num_train_trajectories,
      num_validation_trajectories=c.num_validation_trajectories, seed=int(seed))


# ----------------------------------------------------------------------------- simulation


def trajectory_keys(seed: int, split: str, indices: np.ndarray) -> jax.Array:
  """PRNG keys (N,) of the trajectories `indices` of `split`."""
  split_key = jax.random.fold_in(jax.random.key(seed), SPLITS.index(split))
  return jax.vmap(lambda i: jax.random.fold_in(split_key, i))(jnp.asarray(indices, jnp.uint32))


@functools.partial(jax.jit, static_argnums=(0, 2))
def simulate(env: Environment, keys: jax.Array, trajectory_length: int
             ) -> tuple[jax.Array, jax.Array]:
  """Collection trajectories: keys (N,) -> (actions f32 (N, L, A), states f32 (N, L+1, S))."""
  return jax.vmap(lambda key: env.collect_trajectory(key, trajectory_length))(keys)


@functools.partial(jax.jit, static_argnums=(0, 2))
def render_frames(env: Environment, states: jax.Array, image_size: int) -> jax.Array:
  """states f32 (N, T, state_dim) -> frames uint8 (N, T, S, S, 3)."""
  return jax.vmap(jax.vmap(lambda s: env.render(s, image_size)))(states)


def _chunk_size(config: TrajectoriesConfig) -> int:
  """Trajectories per generation chunk: bounded by _CHUNK_BYTES of frames, and the same for
  both splits so that `simulate` (slow to compile) compiles once."""
  per_trajectory = (config.trajectory_length + 1) * config.image_size ** 2 * 3
  largest_split = max(config.num_train_trajectories, config.num_validation_trajectories)
  return max(1, min(largest_split, _CHUNK_BYTES // per_trajectory))


def simulate_split(config: TrajectoriesConfig, split: str
                   ) -> Iterator[tuple[int, np.ndarray, np.ndarray, jax.Array]]:
  """Yields (first index, actions (C, L, A), states (C, L+1, S), states on device).

  Every chunk is simulated at the full chunk size (the last one padded by repeating its last
  trajectory, then cut), so the numbers never depend on where a chunk ends; the same chunks
  serve rendering and the normalisation stats.
  """
  env = envs.get(config.env)
  count = {'train': config.num_train_trajectories,
           'validation': config.num_validation_trajectories}[split]
  chunk = _chunk_size(config)
  for first in range(0, count, chunk):
    real = min(chunk, count - first)
    indices = first + np.minimum(np.arange(chunk), real - 1)
    actions, states = simulate(env, trajectory_keys(config.seed, split, indices),
                               config.trajectory_length)
    yield first, np.asarray(actions)[:real], np.asarray(states)[:real], states[:real]


def _proprio(env: Environment, states: np.ndarray) -> np.ndarray:
  """`env.proprio` over (..., state_dim) numpy states -> (..., P) float32."""
  flat = states.reshape(-1, states.shape[-1])
  return np.asarray(jax.vmap(env.proprio)(flat), np.float32).reshape(
      states.shape[:-1] + (env.proprio_dim,))


def train_stats(config: TrajectoriesConfig) -> dict:
  """Per-dimension mean/std (ddof=0) of raw actions and proprio over the train split."""
  env = envs.get(config.env)
  action_moments = stats_lib.MomentAccumulator(env.action_dim)
  proprio_moments = stats_lib.MomentAccumulator(env.proprio_dim)
  for _, actions, states, _ in simulate_split(config, 'train'):
    action_moments.add(actions)
    proprio_moments.add(_proprio(env, states))
  action_mean, action_std = action_moments.mean_std()
  proprio_mean, proprio_std = proprio_moments.mean_std()
  return dict(action_mean=action_mean, action_std=action_std, proprio_mean=proprio_mean,
              proprio_std=proprio_std, num_trajectories=config.num_train_trajectories,
              split='train')


# ----------------------------------------------------------------------------- TFDS builder


class Trajectories(tfds.core.GeneratorBasedBuilder):
  """Collection trajectories of one environment (see the module docstring); build with
  `generate`."""

  VERSION = tfds.core.Version('2.1.0')
  RELEASE_NOTES = {
      '1.0.0': 'Random-walk DotWall trajectories rendered in JAX (as wall_trajectories).',
      '1.1.0': 'Walks keep pushing into walls (reference random walk; no heading reversal).',
      '2.0.0': 'One builder for every environment; full simulator states stored as `states`.',
      '2.1.0': 'Push-T steps as pymunk from its whole state (block velocity, warm start): 47 '
               'numbers per state, other dynamics.',
  }

  def __init__(self, *, config: TrajectoriesConfig, data_dir: str, **kwargs):
    super().__init__(config=config, data_dir=data_dir, file_format='array_record', **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    c = self.builder_config
    env = envs.get(c.env)
    s, steps = c.image_size, c.trajectory_length
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__.splitlines()[0],
        features=tfds.features.FeaturesDict({
            'observations': tfds.features.Tensor(
                shape=(steps + 1, s, s, 3), dtype=np.uint8,
                encoding=tfds.features.Encoding.ZLIB),
            'actions': tfds.features.Tensor(shape=(steps, env.action_dim), dtype=np.float32),
            'proprio': tfds.features.Tensor(shape=(steps + 1, env.proprio_dim),
                                            dtype=np.float32),
            'states': tfds.features.Tensor(shape=(steps + 1, env.state_dim), dtype=np.float32),
        }),
        # Example i of a split is trajectory i: keep generation order.
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    return {split: self._generate_examples(split) for split in SPLITS}

  def _generate_examples(self, split: str):
    c = self.builder_config
    env = envs.get(c.env)
    for first, actions, states, device_states in simulate_split(c, split):
      frames = np.asarray(render_frames(env, device_states, c.image_size))
      proprio = _proprio(env, states)
      logging.info('%s trajectories %s: rendered %d..%d', c.env, split, first,
                   first + len(actions) - 1)
      for j in range(len(actions)):
        yield first + j, {'observations': frames[j], 'actions': actions[j],
                          'proprio': proprio[j], 'states': states[j]}


# ----------------------------------------------------------------------------- entry points


def dataset_dir(data_dir: str, env_name: str, data_config: Any, seed: int) -> str:
  """Folder of the dataset that `generate(data_dir, env_name, data_config, seed)` writes."""
  config = builder_config(env_name, data_config, seed)
  return os.path.join(os.fspath(data_dir), Trajectories.name, config.name,
                      str(Trajectories.VERSION))


def is_complete(path: str) -> bool:
  """True when TFDS finished writing `path` and its stats.json and integrity.json exist."""
  return all(os.path.isfile(os.path.join(path, name)) for name in (
      'dataset_info.json', stats_lib.STATS_FILENAME, integrity.INTEGRITY_FILENAME))


def locate_dataset(config: Any, data_dir: str) -> str:
  """Folder of the complete `config.env` dataset for `config.data` under `data_dir`; a missing
  or unfinished dataset is one line naming the command that makes it."""
  path = dataset_dir(data_dir, config.env, config.data, int(config.seed))
  if not is_complete(path):
    raise FileNotFoundError(
        f'no complete {config.env} dataset at {path} (data_dir={data_dir}); generate it with '
        f'`python -m experiments.generate_data --config=experiments/configs/{config.env}.py:'
        f'{config.get("variant", "tiny")} --data_dir={data_dir}` or pass the right --data_dir')
  return path


def _rebuild_hint(path: str) -> str:
  return (f'python -m experiments.generate_data --config=experiments/configs/<env>.py:<variant> '
          f'--data_dir={os.path.dirname(os.path.dirname(os.path.dirname(path)))}')


def generate(data_dir: str, env_name: str, data_config: Any, seed: int) -> str:
  """Generates the dataset (no-op when complete and intact) and its train stats; returns its
  folder.

  Call it from one process only (multi-host jobs: process 0, then a barrier); the readers
  are safe to use from every process.

  An interruption leaves either TFDS's `incomplete.*` folder (ignored, regenerated next time)
  or a dataset without stats.json / integrity.json (finished next time); neither counts as
  complete. A complete dataset whose files no longer match what was recorded (a truncated
  shard, an edited dataset_info.json) is deleted and rebuilt.
  """
  config = builder_config(env_name, data_config, seed)
  path = dataset_dir(data_dir, env_name, data_config, seed)
  if is_complete(path):
    damage = integrity.problem(path)
    if damage is None:
      logging.info('dataset already complete at %s', path)
      return path
    logging.warning('dataset %s is damaged (%s): rebuilding it', path, damage)
    shutil.rmtree(path)
  start = time.time()
  if not os.path.isfile(os.path.join(path, 'dataset_info.json')):
    builder = Trajectories(config=config, data_dir=os.fspath(data_dir))
    with console.library_prints():
      builder.download_and_prepare()
    if os.path.realpath(os.fspath(builder.data_dir)) != os.path.realpath(path):
      raise RuntimeError(f'TFDS wrote {builder.data_dir}, expected {path}')
  stats_lib.write_stats(path, train_stats(config))
  integrity.record(path)
  logging.info('generated %s in %.1f s', path, time.time() - start)
  return path


def open_builder(path: str) -> tfds.core.DatasetBuilder:
  """Read-only TFDS builder of a complete, intact dataset folder; one clear line otherwise."""
  path = os.fspath(path)
  if not is_complete(path):
    state = 'is incomplete' if os.path.isdir(path) else 'does not exist'
    raise ValueError(f'dataset {path} {state}: generate it with `{_rebuild_hint(path)}`')
  integrity.verify(path, _rebuild_hint(path), check_checksums=False)
  return tfds.builder_from_directory(path)


def trajectory_length(builder: tfds.core.DatasetBuilder) -> int:
  """Env steps L per trajectory of a built dataset (its frames number L+1)."""
  return int(builder.info.features['actions'].shape[0])


def load_trajectories(path: str, split: str, max_count: int | None = None
                      ) -> dict[str, np.ndarray]:
  """Whole trajectories of a split, stacked: observations uint8 (N, L+1, S, S, 3), actions f32
  (N, L, A), proprio f32 (N, L+1, P), states f32 (N, L+1, state_dim); the first `max_count`."""
  if split not in SPLITS:
    raise ValueError(f'unknown split {split!r}; choose one of {SPLITS}')
  source = open_builder(path).as_data_source(split)
  count = len(source) if max_count is None else min(int(max_count), len(source))
  examples = [source[i] for i in range(count)]
  return {k: np.stack([e[k] for e in examples]) for k in FEATURES}


def describe(path: str) -> Mapping[str, Any]:
  """Split sizes and bytes on disk of a dataset folder (for progress reports)."""
  size = sum(os.path.getsize(os.path.join(root, f))
             for root, _, files in os.walk(path) for f in files)
  builder = open_builder(path)
  return {'path': path, 'bytes': size,
          **{split: builder.info.splits[split].num_examples for split in SPLITS}}
