"""Importing the peers' datasets (jepa_jax.data.importers, experiments/import_dataset.py).

Every peer file here is written by the test in the peer's own layout (DINO-WM's tensors saved
with torch.save, stable-worldmodel's HDF5 columns with h5py and Lance tables with pylance, as
their loaders in gaoyuezhou/dino_wm `datasets/*_dset.py` and galilai-group/stable-worldmodel
`data/formats/` read them), from trajectories of our own simulators converted to the peer's
units. The round trip must give back our own data bit for bit (JPEG-coded Lance frames within
the codec's error), and the importers must refuse every mismatch in one line.
"""

import io
import os
import pickle
import subprocess
import sys

import jax
import numpy as np
import pytest

from jepa_jax import envs
from jepa_jax.data import importers, integrity, trajectories
from jepa_jax.data import stats as stats_lib
from jepa_jax.data.importers import dino_wm

torch = pytest.importorskip('torch')
h5py = pytest.importorskip('h5py')

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = dict(image_size=16, num_train_trajectories=6, num_validation_trajectories=2,
            trajectory_length=25)


@pytest.fixture(scope='module')
def wall(tmp_path_factory):
  """Our generated Wall dataset: (folder, {split: trajectories})."""
  path = trajectories.generate(str(tmp_path_factory.mktemp('generated')), 'wall', DATA, 0)
  return path, {split: trajectories.load_trajectories(path, split)
                for split in trajectories.SPLITS}


# ----------------------------------------------------------------------------- peer layouts


def save_tensor(array, path):
  torch.save(torch.from_numpy(np.ascontiguousarray(array)), path)


def write_dino_wm_wall(folder, data):
  """DINO-WM `wall_single`: states.pth, actions.pth, door/wall_locations.pth, and per episode
  obses/episode_XXX.pth uint8 (T, 3, H, W) (WallDataset does not permute the frames)."""
  os.makedirs(os.path.join(folder, 'obses'))
  n, frames = data['states'].shape[:2]
  save_tensor(data['states'], os.path.join(folder, 'states.pth'))
  save_tensor(data['actions'], os.path.join(folder, 'actions.pth'))
  save_tensor(np.full((n, frames), 30.0, np.float32), os.path.join(folder, 'door_locations.pth'))
  save_tensor(np.full((n, frames), 32.0, np.float32), os.path.join(folder, 'wall_locations.pth'))
  for i, obs in enumerate(data['observations']):
    save_tensor(obs.transpose(0, 3, 1, 2), os.path.join(folder, 'obses', f'episode_{i:03d}.pth'))


def swm_rows(data):
  """stable-worldmodel rows of episodes: per step pixels, action (the last row of an episode
  holds collect's NaN placeholder), state, proprio; plus ep_len / ep_offset."""
  n, frames = data['states'].shape[:2]
  nan_row = np.full((n, 1, data['actions'].shape[-1]), np.nan, np.float32)
  return dict(pixels=data['observations'].reshape((n * frames,) + data['observations'].shape[2:]),
              action=np.concatenate([data['actions'], nan_row], 1).reshape(n * frames, -1),
              state=data['states'].reshape(n * frames, -1),
              proprio=data['proprio'].reshape(n * frames, -1),
              ep_len=np.full(n, frames, np.int32),
              ep_offset=np.arange(n, dtype=np.int64) * frames)


def write_swm_hdf5(path, data):
  """stable-worldmodel HDF5Writer: one dataset per column, chunked by row, plus ep_len/offset."""
  with h5py.File(path, 'w', libver='latest') as f:
    for key, values in swm_rows(data).items():
      chunks = (1,) + values.shape[1:] if key not in ('ep_len', 'ep_offset') else True
      f.create_dataset(key, data=values, chunks=chunks, maxshape=(None,) + values.shape[1:])


def write_swm_lance(path, data):
  """stable-worldmodel LanceWriter: episode_idx, step_idx (int32), pixels as JPEG (quality 95)
  `pa.binary`, numeric columns as fixed_size_list<float32>."""
  lance = pytest.importorskip('lance')
  import pyarrow as pa
  from PIL import Image
  rows = swm_rows(data)
  n = len(rows['ep_len'])
  frames = int(rows['ep_len'][0])

  def jpeg(frame):
    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format='JPEG', quality=95)
    return buffer.getvalue()

  columns = {'episode_idx': pa.array(np.repeat(np.arange(n, dtype=np.int32), frames)),
             'step_idx': pa.array(np.tile(np.arange(frames, dtype=np.int32), n)),
             'pixels': pa.array([jpeg(f) for f in rows['pixels']], pa.binary())}
  for key in ('action', 'state', 'proprio'):
    values = rows[key].astype(np.float32)
    columns[key] = pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)),
                                                     values.shape[1])
  lance.write_dataset(pa.table(columns), path)


# ----------------------------------------------------------------------------- round trips


def assert_same_dataset(imported, original_path, original):
  for split in trajectories.SPLITS:
    got = trajectories.load_trajectories(imported, split)
    for key in trajectories.FEATURES:
      np.testing.assert_array_equal(got[key], original[split][key], err_msg=f'{split} {key}')
  for key, value in stats_lib.load_stats(original_path).items():
    np.testing.assert_allclose(stats_lib.load_stats(imported)[key], value, rtol=1e-6,
                               err_msg=key)
  assert integrity.problem(imported) is None


def test_dino_wm_wall_round_trip_is_exact(wall, tmp_path):
  original_path, original = wall
  write_dino_wm_wall(str(tmp_path / 'wall' / 'train'), original['train'])
  write_dino_wm_wall(str(tmp_path / 'wall' / 'val'), original['validation'])
  path = importers.import_dataset('dino_wm', str(tmp_path / 'wall'), 'wall', DATA, 0,
                                  str(tmp_path / 'data'))
  assert path == trajectories.dataset_dir(str(tmp_path / 'data'), 'wall', DATA, 0)
  assert_same_dataset(path, original_path, original)


def test_swm_hdf5_round_trip_is_exact_and_splits_by_fraction(wall, tmp_path):
  original_path, original = wall
  both = {k: np.concatenate([original['train'][k], original['validation'][k]])
          for k in trajectories.FEATURES}
  write_swm_hdf5(str(tmp_path / 'wall.h5'), both)
  # 8 episodes, validation_fraction 0.25: the last 2 are the validation split.
  path = importers.import_dataset('swm_hdf5', str(tmp_path), 'wall', DATA, 0,
                                  str(tmp_path / 'data'), validation_fraction=0.25)
  assert_same_dataset(path, original_path, original)


def test_swm_lance_round_trip_within_jpeg_error(wall, tmp_path):
  pytest.importorskip('lance')
  original_path, original = wall
  for split, name in (('train', 'train'), ('validation', 'val')):
    write_swm_lance(str(tmp_path / f'{name}.lance'), original[split])
  path = importers.import_dataset('swm_lance', str(tmp_path / 'train.lance'), 'wall', DATA, 0,
                                  str(tmp_path / 'data'),
                                  validation_path=str(tmp_path / 'val.lance'))
  for split in trajectories.SPLITS:
    got = trajectories.load_trajectories(path, split)
    for key in ('actions', 'proprio', 'states'):
      np.testing.assert_array_equal(got[key], original[split][key])
    error = np.abs(got['observations'].astype(int) - original[split]['observations'])
    assert error.mean() < 2.0, error.mean()   # JPEG at quality 95


def test_cuts_long_episodes_into_trajectories_and_resizes(wall, tmp_path):
  """Two 25-step trajectories joined into one 50-step episode come back as both; frames stored
  at 32 px are resized to the config's 16 px as the environment renders them."""
  _, original = wall
  train = original['train']
  env = envs.get('wall')
  joined = {'states': np.concatenate([train['states'][0], train['states'][1][1:]])[None],
            'actions': np.concatenate([train['actions'][0], train['actions'][1]])[None]}
  # Trajectory 1 starts where trajectory 0 ended only in our joined copy: restart the walk.
  joined['states'][0, 26:] = np.asarray(env.rollout(joined['states'][0, 25],
                                                    joined['actions'][0, 25:]))[1:]
  render32 = jax.jit(jax.vmap(lambda s: env.render(s, 32)))
  joined['observations'] = np.asarray(render32(joined['states'][0]))[None]
  write_dino_wm_wall(str(tmp_path / 'peer' / 'train'), joined)
  write_dino_wm_wall(str(tmp_path / 'peer' / 'val'), joined)
  data = dict(DATA, num_train_trajectories=2, num_validation_trajectories=1)
  path = importers.import_dataset('dino_wm', str(tmp_path / 'peer'), 'wall', data, 0,
                                  str(tmp_path / 'data'))
  got = trajectories.load_trajectories(path, 'train')
  np.testing.assert_array_equal(got['states'][1], joined['states'][0, 25:])
  np.testing.assert_array_equal(got['actions'][1], joined['actions'][0, 25:])
  # The reference resize: torch's bilinear interpolation with half-pixel centres, no antialias.
  frames32 = torch.from_numpy(np.array(joined['observations'][0, 25:])).permute(0, 3, 1, 2).double()
  expected = torch.nn.functional.interpolate(frames32, size=(16, 16), mode='bilinear',
                                             align_corners=False, antialias=False)
  expected = expected.round().clamp(0, 255).permute(0, 2, 3, 1).numpy()
  assert np.abs(got['observations'][1].astype(int) - expected).max() <= 1
  too_many = dict(DATA, num_train_trajectories=3, num_validation_trajectories=1)
  with pytest.raises(ValueError, match='num_train_trajectories=2'):
    importers.import_dataset('dino_wm', str(tmp_path / 'peer'), 'wall', too_many, 0,
                             str(tmp_path / 'data2'))


@pytest.fixture(scope='module')
def push_t(tmp_path_factory):
  """Push-T episodes of our simulator (3 x 30 steps of smooth random pushes, 32 px) in DINO-WM's
  pusht_noise layout: states (5), velocities, rel_actions in pixels (= 100 x env action),
  seq_lengths.pkl, and obses/episode_XXX.mp4; a shorter episode is zero-padded as in DINO-WM's
  tensors."""
  import av
  env = envs.get('push_t')
  state = jax.vmap(env.random_state)(jax.random.split(jax.random.PRNGKey(0), 3))
  noise = np.asarray(jax.random.normal(jax.random.PRNGKey(1), (3, 30, 2)))
  actions = (0.2 * np.cumsum(noise, 1) / np.sqrt(np.arange(1, 31))[:, None]).astype(np.float32)
  step = jax.jit(jax.vmap(env.step))
  visited = [state]
  for t in range(30):
    visited.append(step(visited[-1], actions[:, t]))
  states = np.stack([np.asarray(s) for s in visited], 1)
  frames = np.asarray(trajectories.render_frames(env, jax.numpy.asarray(states), 32))
  lengths = [31, 31, 27]
  folder = tmp_path_factory.mktemp('pusht_noise')
  os.makedirs(folder / 'obses')
  pad = lambda x: np.stack([np.where(np.arange(len(e))[:, None] < t, e, 0)
                            for e, t in zip(x, lengths)])
  save_tensor(pad(states[..., :5]), folder / 'states.pth')
  save_tensor(pad(states[..., 5:7]), folder / 'velocities.pth')
  rel = np.concatenate([actions, np.zeros_like(actions[:, :1])], 1) * 100.0
  save_tensor(pad(rel), folder / 'rel_actions.pth')
  save_tensor(pad(rel) + states[..., :2], folder / 'abs_actions.pth')
  with open(folder / 'seq_lengths.pkl', 'wb') as f:
    pickle.dump(lengths, f)
  for i, video in enumerate(frames):
    with av.open(str(folder / 'obses' / f'episode_{i:03d}.mp4'), 'w') as container:
      stream = container.add_stream('libx264', rate=10)
      stream.width = stream.height = 32
      stream.pix_fmt = 'yuv444p'
      stream.options = {'crf': '0'}
      for frame in video[:lengths[i]]:
        container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format='rgb24')))
      container.mux(stream.encode())
  return folder, actions, states, frames


def test_dino_wm_push_t_maps_units_and_lengths(push_t, tmp_path):
  folder, actions, states, frames = push_t
  data = dict(image_size=32, num_train_trajectories=2, num_validation_trajectories=1,
              trajectory_length=20)
  path = importers.import_dataset('dino_wm', str(folder), 'push_t', data, 0,
                                  str(tmp_path / 'data'), validation_fraction=0.3)
  train = trajectories.load_trajectories(path, 'train')
  np.testing.assert_allclose(train['actions'], actions[:2, :20], rtol=1e-6, atol=1e-7)
  # The reference's 7 numbers (the rest of our state is pymunk's contact history, at rest).
  np.testing.assert_allclose(train['states'][..., :7], states[:2, :21, :7], rtol=1e-6, atol=1e-5)
  assert np.abs(train['observations'].astype(int) - frames[:2, :21]).mean() < 1.0  # lossless x264
  validation = trajectories.load_trajectories(path, 'validation')   # the 27-frame episode
  np.testing.assert_allclose(validation['states'][0, :, :7], states[2, :21, :7], rtol=1e-6,
                             atol=1e-5)
  stats = stats_lib.load_stats(path)
  np.testing.assert_allclose(stats['action_mean'], actions[:2, :20].reshape(-1, 2).mean(0),
                             rtol=1e-5)
  # The loader's other choice of units (rel_actions not divided by 100) is caught.
  wrong = tmp_path / 'wrong'
  os.makedirs(wrong)
  for name in os.listdir(folder):
    os.symlink(folder / name, wrong / name)
  os.remove(wrong / 'rel_actions.pth')
  save_tensor(np.concatenate([actions, np.zeros_like(actions[:, :1])], 1),
              wrong / 'rel_actions.pth')
  with pytest.raises(ValueError, match='do not move the states'):
    importers.import_dataset('dino_wm', str(wrong), 'push_t', data, 0, str(tmp_path / 'data2'),
                             validation_fraction=0.3)


def test_dino_wm_point_maze_layout(tmp_path):
  """DINO-WM's point_maze folder: zero-padded (N, T, 4) states and (N, T, 2) actions with
  seq_lengths.pth, frames stored channels last. Layout only (synthetic numbers, so the dynamics
  check is off)."""
  rng = np.random.default_rng(0)
  lengths = np.array([21, 26, 30])
  states = rng.uniform(0.5, 3.0, (3, 30, 4)).astype(np.float32)
  actions = rng.uniform(-1, 1, (3, 30, 2)).astype(np.float32)
  frames = rng.integers(0, 256, (3, 30, 16, 16, 3), dtype=np.uint8)
  for e, t in enumerate(lengths):
    states[e, t:], actions[e, t:] = 0, 0
  folder = tmp_path / 'point_maze'
  os.makedirs(folder / 'obses')
  save_tensor(states, folder / 'states.pth')
  save_tensor(actions, folder / 'actions.pth')
  save_tensor(lengths, folder / 'seq_lengths.pth')
  for e, t in enumerate(lengths):
    save_tensor(frames[e, :t], folder / 'obses' / f'episode_{e:03d}.pth')
  data = dict(image_size=16, num_train_trajectories=2, num_validation_trajectories=1,
              trajectory_length=20)
  path = importers.import_dataset('dino_wm', str(folder), 'point_maze', data, 0,
                                  str(tmp_path / 'data'), validation_fraction=0.3,
                                  check_dynamics=False)
  train = trajectories.load_trajectories(path, 'train')
  np.testing.assert_array_equal(train['states'], states[:2, :21])
  np.testing.assert_array_equal(train['proprio'], states[:2, :21])
  np.testing.assert_array_equal(train['actions'], actions[:2, :20])
  np.testing.assert_array_equal(train['observations'], frames[:2, :21])
  validation = trajectories.load_trajectories(path, 'validation')
  np.testing.assert_array_equal(validation['actions'][0], actions[2, :20])
  with pytest.raises(ValueError, match='sequence lengths must lie in'):
    save_tensor(np.array([21, 26, 31]), folder / 'seq_lengths.pth')
    importers.import_dataset('dino_wm', str(folder), 'point_maze', data, 0,
                             str(tmp_path / 'data2'), check_dynamics=False)


# ----------------------------------------------------------------------------- refusals


def one_line_error(fn, match):
  with pytest.raises((ValueError, ImportError)) as raised:
    fn()
  message = str(raised.value)
  assert '\n' not in message and match in message, message


def test_every_mismatch_is_one_line(wall, tmp_path):
  _, original = wall
  peer = str(tmp_path / 'peer')
  write_dino_wm_wall(peer, original['train'])
  run = lambda fmt='dino_wm', path=peer, env='wall', **kw: importers.import_dataset(
      fmt, path, env, dict(DATA, num_train_trajectories=4, num_validation_trajectories=1), 0,
      str(tmp_path / 'data'), **kw)
  one_line_error(lambda: run(env='cartpole'), 'unknown environment')
  one_line_error(lambda: run(fmt='rlds'), 'unknown dataset format')
  one_line_error(lambda: run(env='point_maze'), "no 'seq_lengths.pth'")
  os.rename(os.path.join(peer, 'actions.pth'), os.path.join(peer, 'moved.pth'))
  one_line_error(run, "no 'actions.pth'")
  save_tensor(np.zeros((6, 25, 3), np.float32), os.path.join(peer, 'actions.pth'))
  one_line_error(run, 'actions.pth has shape (6, 25, 3); expected (6, N, 2)')
  save_tensor(original['train']['actions'], os.path.join(peer, 'actions.pth'))
  save_tensor(np.zeros((26, 16, 16, 3), np.uint8), os.path.join(peer, 'obses', 'episode_000.pth'))
  one_line_error(run, 'expected (N, 3, N, N)')
  os.remove(os.path.join(peer, 'obses', 'episode_000.pth'))
  one_line_error(run, 'obses/episode_000.pth is missing')
  write_dino_wm_wall(str(tmp_path / 'shifted'), {  # actions a step late: the dynamics check
      **original['train'], 'actions': np.roll(original['train']['actions'], 1, axis=1)})
  one_line_error(lambda: run(path=str(tmp_path / 'shifted')), 'shifted by a step')
  rows = {k: np.concatenate([original['train'][k]]) for k in trajectories.FEATURES}
  rows['proprio'] = rows['proprio'] / 65.0          # proprio in other units than the state
  write_swm_hdf5(str(tmp_path / 'scaled.h5'), rows)
  one_line_error(lambda: run(fmt='swm_hdf5', path=str(tmp_path / 'scaled.h5')),
                 'stored proprio differs')
  rows = dict(original['train'], actions=np.repeat(original['train']['actions'], 5, -1)[:, :, :10])
  write_swm_hdf5(str(tmp_path / 'stacked.h5'), rows)
  one_line_error(lambda: run(fmt='swm_hdf5', path=str(tmp_path / 'stacked.h5')),
                 'concatenated per model step')
  with h5py.File(tmp_path / 'nostate.h5', 'w') as f:
    f['pixels'] = np.zeros((2, 4, 4, 3), np.uint8)
  one_line_error(lambda: run(fmt='swm_hdf5', path=str(tmp_path / 'nostate.h5')), "no 'action'")


def test_pickles_cannot_run_code(tmp_path):
  class Exploit:
    def __reduce__(self):
      return (os.system, ('touch ' + str(tmp_path / 'pwned'),))
  with open(tmp_path / 'seq_lengths.pkl', 'wb') as f:
    pickle.dump([Exploit()], f)
  with pytest.raises(ValueError, match='refusing to load'):
    dino_wm.load_plain_pickle(str(tmp_path / 'seq_lengths.pkl'))
  assert not os.path.exists(tmp_path / 'pwned')
  with open(tmp_path / 'plain.pkl', 'wb') as f:
    pickle.dump([np.int64(3), 4, np.arange(2)], f)
  loaded = dino_wm.load_plain_pickle(str(tmp_path / 'plain.pkl'))
  assert loaded[:2] == [3, 4] and list(loaded[2]) == [0, 1]


def test_refuses_to_replace_a_dataset_unless_asked(wall, tmp_path):
  original_path, original = wall
  write_dino_wm_wall(str(tmp_path / 'peer' / 'train'), original['train'])
  write_dino_wm_wall(str(tmp_path / 'peer' / 'val'), original['validation'])
  data_dir = os.path.dirname(os.path.dirname(os.path.dirname(original_path)))
  with pytest.raises(ValueError, match='complete generated dataset already exists'):
    importers.import_dataset('dino_wm', str(tmp_path / 'peer'), 'wall', DATA, 0, data_dir)


def test_binary(wall, tmp_path):
  _, original = wall
  write_dino_wm_wall(str(tmp_path / 'peer' / 'train'), original['train'])
  write_dino_wm_wall(str(tmp_path / 'peer' / 'val'), original['validation'])
  command = [sys.executable, '-m', 'experiments.import_dataset', '--format=dino_wm',
             f'--input={tmp_path / "peer"}', '--config=experiments/configs/wall.py:smoke',
             f'--data_dir={tmp_path / "data"}',
             *[f'--config.data.{k}={v}' for k, v in DATA.items()]]
  run = lambda *extra: subprocess.run(command + list(extra), cwd=REPO, capture_output=True,
                                      text=True, timeout=300,
                                      env={**os.environ, 'JAX_PLATFORMS': 'cpu'})
  done = run()
  assert done.returncode == 0, done.stderr[-2000:]
  path = trajectories.dataset_dir(str(tmp_path / 'data'), 'wall', DATA, 0)
  assert path in done.stdout and trajectories.is_complete(path)
  other_env = run('--env=push_t')
  assert other_env.returncode != 0 and 'push_t.py' in other_env.stderr
  assert len(other_env.stderr.strip().splitlines()) == 1


@pytest.mark.slow   # ~1 min on 2 cores: LeWorldModel trains for a few steps, then plans
def test_imported_dataset_trains_and_plans(tmp_path):
  """Our Wall data through stable-worldmodel's HDF5 layout and back is the generated dataset
  (same trajectories, same stats: the same inputs to every stage), and the smoke pipeline's
  LeWorldModel trains on the imported copy and plans with it."""
  from experiments.configs import wall as wall_configs
  from jepa_jax.lewm import train as lewm_train
  from jepa_jax.planning import run as planning_run
  config = wall_configs.get_config('smoke')
  config.data.update(num_train_trajectories=16, num_validation_trajectories=4)
  config.lewm.update(num_steps=4, batch_size=8, log_every=2, checkpoint_every=4,
                     eval_batch_size=8, eval_num_batches=1, statistics_batches=1,
                     geometry_frames=32)
  config.planning.update(num_episodes=2, num_gifs=1, latency_repeats=1)
  config.planning.cem.update(num_samples=8, num_iters=2, num_elites=2)
  generated = trajectories.generate(str(tmp_path / 'generated'), 'wall', config.data, 0)
  original = {split: trajectories.load_trajectories(generated, split)
              for split in trajectories.SPLITS}
  write_swm_hdf5(str(tmp_path / 'wall.h5'), {
      k: np.concatenate([original['train'][k], original['validation'][k]])
      for k in trajectories.FEATURES})
  data_dir = str(tmp_path / 'data')
  imported = importers.import_dataset('swm_hdf5', str(tmp_path / 'wall.h5'), 'wall',
                                      config.data, 0, data_dir, validation_fraction=0.2)
  assert_same_dataset(imported, generated, original)
  summary = lewm_train.train(config, str(tmp_path / 'lewm'), data_dir)
  assert np.isfinite(summary['rollout_error']['visual_mean'])
  results = planning_run.run_planning(str(tmp_path / 'planning'), config,
                                      str(tmp_path / 'lewm' / 'model'))
  assert results['episodes'] == 2 and 0.0 <= results['success_rate'] <= 1.0
  assert os.path.isfile(os.path.join(tmp_path, 'planning', 'results.json'))
