"""The trajectory dataset (TFDS ArrayRecord, generated here for Wall), normalisation stats and the grain clip pipeline.

References are independent numpy re-derivations from the stored whole trajectories (explicit
loops over frames and actions), and un-jitted, un-vmapped env calls for the generation.
"""

import os

import grain
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest

from jepa_jax.data import pipeline
from jepa_jax.data import stats as stats_lib
from jepa_jax.data import trajectories
from jepa_jax.envs import wall

DATA = dict(image_size=16, num_train_trajectories=8, num_validation_trajectories=4,
            trajectory_length=30)
SEED = 3
T, FS = 4, 5
STARTS = DATA['trajectory_length'] - T * FS + 1      # 11 clips per trajectory


@pytest.fixture(scope='module')
def dataset(tmp_path_factory):
  return trajectories.generate(str(tmp_path_factory.mktemp('data')), 'wall', DATA, SEED)


@pytest.fixture(scope='module')
def train(dataset):
  return trajectories.load_trajectories(dataset, 'train')


def loader(dataset, **kwargs):
  args = dict(batch_size=4, num_frames=T, frameskip=FS, seed=0)
  args.update(kwargs)
  return pipeline.make_clip_loader(dataset, 'train', **args)


def all_clips(iterator):
  """Concatenates every batch of a finite iterator: dict of (N, ...) arrays."""
  batches = list(iterator)
  return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}


def expected_clips(train, stats):
  """Every (trajectory, start) clip in record order, by explicit loops."""
  out = {'observations': [], 'actions': [], 'proprio': [], 'states': []}
  for n in range(DATA['num_train_trajectories']):
    for t0 in range(STARTS):
      obs, acts, prop, states = [], [], [], []
      for i in range(T):
        step = t0 + i * FS
        obs.append(train['observations'][n, step])
        states.append(train['states'][n, step].astype(np.float64))
        prop.append((train['proprio'][n, step].astype(np.float64) - stats['proprio_mean'])
                    / stats['proprio_std'])
        acts.append(np.concatenate([
            (train['actions'][n, step + j].astype(np.float64) - stats['action_mean'])
            / stats['action_std'] for j in range(FS)]))
      for key, value in zip(out, (obs, acts, prop, states)):
        out[key].append(np.stack(value))
  return {k: np.stack(v) for k, v in out.items()}


def clip_ids(clips):
  return [clips['states'][i].tobytes() + clips['actions'][i].tobytes()
          for i in range(len(clips['states']))]


def test_stored_trajectories_match_env(dataset, train):
  val = trajectories.load_trajectories(dataset, 'validation', max_count=2)
  length, size = DATA['trajectory_length'], DATA['image_size']
  # Jitted: op-by-op dispatch of the env functions takes seconds.
  transition, render = jax.jit(wall.transition), jax.jit(wall.render, static_argnums=1)
  assert train['observations'].shape == (8, length + 1, size, size, 3)
  assert train['observations'].dtype == np.uint8
  assert train['actions'].shape == (8, length, 2) and train['proprio'].shape == (8, length + 1, 2)
  assert val['actions'].shape == (2, length, 2)
  for data in (train, val):
    # Wall's proprio is its whole state, the dot position.
    np.testing.assert_array_equal(data['proprio'], data['states'])
    # Each stored step is one env transition of the stored action.
    np.testing.assert_allclose(data['states'][:, 1:],
                               transition(data['states'][:, :-1], data['actions']), atol=1e-4)
    for t in (0, length // 2, length):
      frames = np.asarray(render(data['states'][:, t], size)).astype(int)
      assert np.abs(data['observations'][:, t].astype(int) - frames).max() <= 1
  # Trajectory n depends only on (seed, split, n): simulating the chunk in another order
  # gives the same trajectories.
  order = np.arange(8)[::-1]
  actions, states = trajectories.simulate(
      wall.ENV, trajectories.trajectory_keys(SEED, 'train', order), length)
  np.testing.assert_array_equal(np.asarray(actions), train['actions'][order])
  np.testing.assert_array_equal(np.asarray(states), train['states'][order])
  assert not np.allclose(train['states'][0], train['states'][1])


def test_stats_match_numpy(dataset, train):
  stats = stats_lib.load_stats(dataset)
  actions = train['actions'].astype(np.float64).reshape(-1, 2)
  proprio = train['proprio'].astype(np.float64).reshape(-1, 2)
  np.testing.assert_allclose(stats['action_mean'], actions.mean(0), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(stats['action_std'], actions.std(0), rtol=1e-5)
  np.testing.assert_allclose(stats['proprio_mean'], proprio.mean(0), rtol=1e-5)
  np.testing.assert_allclose(stats['proprio_std'], proprio.std(0), rtol=1e-5)


def test_clips_match_numpy_slicing(dataset, train):
  clips = all_clips(loader(dataset, shuffle=False, num_epochs=1, batch_size=5,
                           drop_remainder=False))
  expected = expected_clips(train, stats_lib.load_stats(dataset))
  assert clips['observations'].shape == (8 * STARTS, T, 16, 16, 3)
  assert clips['actions'].shape == (8 * STARTS, T, FS * 2)
  assert clips['actions'].dtype == clips['proprio'].dtype == np.float32
  np.testing.assert_array_equal(clips['observations'], expected['observations'])
  for key in ('actions', 'proprio', 'states'):
    np.testing.assert_allclose(clips[key], expected[key], rtol=1e-5, atol=1e-5)


def test_shuffle_is_a_deterministic_permutation(dataset):
  ordered = clip_ids(all_clips(loader(dataset, shuffle=False, num_epochs=1, batch_size=8)))
  first = all_clips(loader(dataset, num_epochs=1, batch_size=8, seed=1))
  again = all_clips(loader(dataset, num_epochs=1, batch_size=8, seed=1))
  other = all_clips(loader(dataset, num_epochs=1, batch_size=8, seed=2))
  for key in first:
    np.testing.assert_array_equal(first[key], again[key])
  assert clip_ids(first) != clip_ids(other) and clip_ids(first) != ordered
  assert sorted(clip_ids(first)) == sorted(ordered)        # 88 clips = 11 batches of 8


def test_epochs_reshuffle(dataset):
  it = loader(dataset, num_epochs=2, batch_size=8, seed=1)
  clips = clip_ids(all_clips(it))
  assert len(clips) == 2 * 8 * STARTS
  epoch1, epoch2 = clips[:8 * STARTS], clips[8 * STARTS:]
  assert sorted(epoch1) == sorted(epoch2) and epoch1 != epoch2


def test_shards_are_disjoint_and_cover(dataset):
  ordered = clip_ids(all_clips(loader(dataset, shuffle=False, num_epochs=1, batch_size=8)))
  shards = [clip_ids(all_clips(loader(dataset, num_epochs=1, batch_size=4, shard_index=i,
                                      shard_count=2))) for i in range(2)]
  assert len(shards[0]) == len(shards[1]) == 4 * STARTS
  assert not set(shards[0]) & set(shards[1])
  assert sorted(shards[0] + shards[1]) == sorted(ordered)


class AddNoise(grain.transforms.RandomMap):

  def random_map(self, element, rng):
    return {**element, 'noise': rng.uniform(size=(3,)).astype(np.float32)}


class CountFrames(grain.transforms.Map):

  def map(self, element):
    return {**element, 'num_frames': np.int32(len(element['observations']))}


def assert_batches_equal(a, b):
  assert a.keys() == b.keys()
  for key in a:
    np.testing.assert_array_equal(a[key], b[key])


def test_state_restore_continues_exactly(dataset):
  kwargs = dict(batch_size=6, seed=5, extra_transforms=(AddNoise(), CountFrames()))
  it = loader(dataset, **kwargs)
  for _ in range(13):            # 78 clips: the next batches cross the epoch end (88 clips)
    next(it)
  state = it.get_state()
  expected = [next(it) for _ in range(3)]
  assert expected[0]['noise'].shape == (6, 3) and (expected[0]['num_frames'] == T).all()
  restored = loader(dataset, **kwargs)
  next(restored)                 # a different position, overwritten by set_state
  restored.set_state(state)
  for batch in expected:
    assert_batches_equal(next(restored), batch)


def test_state_restore_through_orbax(dataset, tmp_path):
  it = loader(dataset, seed=7, extra_transforms=(AddNoise(),))
  for _ in range(4):
    next(it)
  with ocp.CheckpointManager(tmp_path / 'ckpt') as manager:
    manager.save(4, args=ocp.args.Composite(data_iter=grain.checkpoint.CheckpointSave(it)))
    manager.wait_until_finished()
  expected = next(it)
  restored = loader(dataset, seed=7, extra_transforms=(AddNoise(),))
  with ocp.CheckpointManager(tmp_path / 'ckpt') as manager:
    manager.restore(4, args=ocp.args.Composite(
        data_iter=grain.checkpoint.CheckpointRestore(restored)))
  assert_batches_equal(next(restored), expected)


def test_random_transforms_differ_across_shards(dataset):
  noise = [next(loader(dataset, shard_index=i, shard_count=2,
                       extra_transforms=(AddNoise(),)))['noise'] for i in range(2)]
  assert not np.allclose(noise[0], noise[1])


def test_bad_inputs(dataset, tmp_path):
  missing = str(tmp_path / 'nowhere')
  with pytest.raises(ValueError, match='nowhere.*generate_data'):
    loader(missing)
  with pytest.raises(ValueError, match='generate_data'):
    stats_lib.load_stats(missing)
  with pytest.raises(ValueError, match='num_frames=7.*frameskip=5.*trajectory_length=30'):
    loader(dataset, num_frames=7)
  with pytest.raises(ValueError, match='batch_size=100'):
    loader(dataset, batch_size=100, shard_count=2)
  with pytest.raises(ValueError, match='extra_transforms\\[0\\]'):
    loader(dataset, extra_transforms=(lambda x: x,))
  with pytest.raises(ValueError, match='split'):
    pipeline.make_clip_loader(dataset, 'test', batch_size=2, num_frames=T, frameskip=FS, seed=0)
  with pytest.raises(ValueError, match='split'):
    trajectories.load_trajectories(dataset, 'test')
  with pytest.raises(TypeError, match='num_hist_frames'):
    trajectories.as_data_config({**DATA, 'num_hist_frames': 3})


def test_interrupted_generation_is_never_complete(dataset, tmp_path, monkeypatch):
  data_dir = str(tmp_path)
  path = trajectories.dataset_dir(data_dir, 'wall', DATA, SEED)

  def interrupted(*args):
    raise KeyboardInterrupt('simulated interruption')

  # While TFDS writes the examples.
  with monkeypatch.context() as patch:
    patch.setattr(trajectories, 'render_frames', interrupted)
    with pytest.raises(KeyboardInterrupt):
      trajectories.generate(data_dir, 'wall', DATA, SEED)
  assert not trajectories.is_complete(path)
  assert not os.listdir(os.path.dirname(path))     # TFDS removed its incomplete.* folder
  with pytest.raises(ValueError, match='does not exist.*generate_data'):
    loader(path)
  # After TFDS finished, before stats.json was written.
  with monkeypatch.context() as patch:
    patch.setattr(trajectories, 'train_stats', interrupted)
    with pytest.raises(KeyboardInterrupt):
      trajectories.generate(data_dir, 'wall', DATA, SEED)
  assert os.path.isfile(os.path.join(path, 'dataset_info.json'))
  assert not trajectories.is_complete(path)
  with pytest.raises(ValueError, match='incomplete.*generate_data'):
    loader(path)
  # A re-run finishes the job and gives the same data as an uninterrupted run.
  assert trajectories.generate(data_dir, 'wall', DATA, SEED) == path
  assert trajectories.is_complete(path)
  for key, value in stats_lib.load_stats(path).items():
    np.testing.assert_array_equal(value, stats_lib.load_stats(dataset)[key])
  np.testing.assert_array_equal(
      trajectories.load_trajectories(path, 'validation')['observations'],
      trajectories.load_trajectories(dataset, 'validation')['observations'])
  # And a further run is a no-op.
  mtime = os.path.getmtime(os.path.join(path, 'stats.json'))
  with monkeypatch.context() as patch:
    patch.setattr(trajectories, 'simulate', interrupted)
    assert trajectories.generate(data_dir, 'wall', DATA, SEED) == path
  assert os.path.getmtime(os.path.join(path, 'stats.json')) == mtime


def test_damaged_dataset_is_named_and_repaired(dataset, tmp_path):
  import glob
  import json
  import shutil
  data_dir = str(tmp_path)
  path = trajectories.generate(data_dir, 'wall', DATA, SEED)
  expected = trajectories.load_trajectories(path, 'train')['actions']
  # An edited dataset_info.json (fewer examples per shard) is caught before any read.
  info_path = os.path.join(path, 'dataset_info.json')
  backup = info_path + '.orig'
  shutil.copy(info_path, backup)
  with open(info_path) as f:
    info = json.load(f)
  info['splits'][0]['shardLengths'] = [str(int(info['splits'][0]['shardLengths'][0]) // 2)]
  with open(info_path, 'w') as f:
    json.dump(info, f)
  with pytest.raises(ValueError, match='dataset_info.json.*generate_data'):
    loader(path)
  shutil.move(backup, info_path)
  # A truncated shard: one line naming the file; `generate` rebuilds instead of saying "ready".
  shard = sorted(glob.glob(os.path.join(path, '*train.array_record*')))[0]
  with open(shard, 'r+b') as f:
    f.truncate(os.path.getsize(shard) // 2)
  with pytest.raises(ValueError, match=os.path.basename(shard)):
    loader(path)
  assert trajectories.generate(data_dir, 'wall', DATA, SEED) == path
  np.testing.assert_array_equal(trajectories.load_trajectories(path, 'train')['actions'],
                                expected)


def test_labeled_loader_reads_exactly_the_first_trajectories(dataset, train):
  # labeled_fraction 0.25 of 8 training trajectories = the first 2; every clip of them, no other.
  config = ml_collections.ConfigDict(dict(data=DATA, labeled_fraction=0.25))
  assert pipeline.labeled_trajectories(config) == 2
  assert pipeline.labeled_trajectories(config, 'validation') == DATA['num_validation_trajectories']
  clips = all_clips(loader(dataset, num_epochs=1, batch_size=1, drop_remainder=False,
                           num_trajectories=pipeline.labeled_trajectories(config)))
  expected = expected_clips(train, stats_lib.load_stats(dataset))
  def state_ids(states):  # a clip's 4 states identify its trajectory and start
    return sorted(s.astype(np.float32).tobytes() for s in states)
  assert state_ids(clips['states']) == state_ids(expected['states'][:2 * STARTS])
  config.labeled_fraction = 1.5
  with pytest.raises(ValueError, match=r'labeled_fraction=1.5 must be in \(0, 1\]'):
    pipeline.labeled_trajectories(config)


def test_relabelled_loader_reads_the_given_actions_after_the_labelled_trajectories(
    dataset, train):
  # 2 labelled trajectories with their stored actions, then 6 with the given ones: every clip
  # of all 8 is read once, each with its trajectory's actions (expected_clips' loops).
  relabelled = np.random.default_rng(0).normal(
      size=(6,) + train['actions'].shape[1:]).astype(np.float32)
  clips = all_clips(loader(dataset, num_epochs=1, batch_size=1, drop_remainder=False,
                           num_trajectories=2, relabelled_actions=relabelled))
  with_labels = {**train, 'actions': np.concatenate([train['actions'][:2], relabelled])}
  expected = expected_clips(with_labels, stats_lib.load_stats(dataset))
  by_states = {s.astype(np.float32).tobytes(): a
               for s, a in zip(expected['states'], expected['actions'])}
  assert len(clips['states']) == len(by_states) == 8 * STARTS
  for states, actions in zip(clips['states'], clips['actions']):
    np.testing.assert_allclose(actions, by_states[states.tobytes()], rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match='7 relabelled trajectories after the first 2 exceed'):
    loader(dataset, num_trajectories=2, relabelled_actions=np.zeros((7, 30, 2), np.float32))
  short = loader(dataset, num_trajectories=2, relabelled_actions=np.zeros((6, 29, 2), np.float32),
                 shuffle=False, batch_size=1)
  with pytest.raises(ValueError, match=r'relabelled actions of shape \(29, 2\)'):
    for _ in range(3 * STARTS):  # the third trajectory is the first relabelled one
      next(short)
