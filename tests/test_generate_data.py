"""experiments/generate_data.py end to end (subprocess: absl flags are process-global)."""

import os
import subprocess
import sys

import numpy as np

from jepa_jax.data import stats as stats_lib
from jepa_jax.data import trajectories

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OVERRIDES = dict(image_size=16, num_train_trajectories=6, num_validation_trajectories=2,
                 trajectory_length=25)


def run_binary(*flags):
  return subprocess.run(
      [sys.executable, '-m', 'experiments.generate_data',
       '--config=experiments/configs/wall.py:smoke',
       *[f'--config.data.{k}={v}' for k, v in OVERRIDES.items()], *flags],
      cwd=REPO, capture_output=True, text=True, timeout=300,
      env={**os.environ, 'JAX_PLATFORMS': 'cpu'})


def test_generate_data_binary(tmp_path):
  first = run_binary(f'--workdir={tmp_path}')
  assert first.returncode == 0, first.stderr[-2000:]
  data = {**OVERRIDES, 'frameskip': 5, 'num_hist': 3, 'num_pred': 1}
  path = trajectories.dataset_dir(str(tmp_path / 'data'), 'wall', data, seed=0)
  assert path in first.stdout
  assert trajectories.is_complete(path)
  train = trajectories.load_trajectories(path, 'train')
  assert train['observations'].shape == (6, 26, 16, 16, 3)
  np.testing.assert_allclose(stats_lib.load_stats(path)['proprio_mean'],
                             train['proprio'].reshape(-1, 2).mean(0), rtol=1e-5)
  mtime = os.path.getmtime(os.path.join(path, 'stats.json'))
  again = run_binary(f'--data_dir={tmp_path / "data"}')         # same folder: a no-op
  assert again.returncode == 0, again.stderr[-2000:]
  assert path in again.stdout
  assert os.path.getmtime(os.path.join(path, 'stats.json')) == mtime
  missing = run_binary()
  assert missing.returncode != 0 and '--workdir' in missing.stderr
  assert len(missing.stderr.strip().splitlines()) == 1       # one line, no traceback
