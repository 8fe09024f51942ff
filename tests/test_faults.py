"""Faults a user can meet, each on real conditions, each ending in one line and losing nothing.

  a full disk           a size-limited tmpfs (mounted in a private user+mount namespace, so
                        no root is needed and nothing is left mounted), the stage-1 binary
  ENOSPC inside orbax   the same tmpfs, filled by another writer between two checkpoint steps;
                        an inode-limited tmpfs under an export
  any other full write  a summary larger than the free space
  a dead peer process   `launch/local_multiprocess.sh 2 2` running stage 1, process 1 killed
  a damaged step        truncated data files of the newest step, restored again and again

Every row of docs/faults.md names the test that holds it (`test_the_faults_table_...`), and the
one line a test observes must match the line that row quotes, so the table stays true.

This file is also the small program the ENOSPC and damaged-step tests run in a subprocess
(`python tests/test_faults.py <case> <folder>`): real orbax writes and reads under the binaries'
console (`console.setup(0)`, `console.run_app`), cheaper than a whole stage.
"""

import functools
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TABLE = os.path.join(REPO, 'docs', 'faults.md')
# Stage 1 on the smoke config, with a one-block encoder and predictor: the faults happen in the
# checkpointing and the console, not in the model, and compiling is most of a run's time.
STAGE1 = [sys.executable, '-m', 'experiments.pretrain', '--config=experiments/configs/wall.py:smoke',
          '--config.method=three_stage', '--config.pretrain.warmup_steps=1',
          '--config.pretrain.batch_size=8', '--config.pretrain.log_every=2',
          '--config.pretrain.checkpoint_every=2', '--config.encoder.depth=1',
          '--config.encoder.width=32', '--config.encoder.num_heads=2',
          '--config.pretrain.predictor.depth=1', '--config.pretrain.predictor.width=32',
          '--config.pretrain.predictor.num_heads=2',
          '--config.pretrain.probe_train_trajectories=4',
          '--config.pretrain.probe_val_trajectories=4', '--config.pretrain.geometry_frames=32']
PROGRESS = re.compile(r'^pretrain: \d+/\d+ ')  # the stage's progress line (not an error)


def _env(**extra):
  return {**os.environ, 'JAX_PLATFORMS': 'cpu', **extra}


# ----------------------------------------------------------------------------- the table


def _table_rows():
  """[(cells...)] of the tables in docs/faults.md (headers and separators dropped)."""
  with open(TABLE) as f:
    lines = [line.strip() for line in f if line.strip().startswith('|')]
  rows = [[cell.strip() for cell in line.strip('|').split('|')] for line in lines]
  return [row for row in rows if row[-1] != 'test' and not set(row[-1]) <= set('-')]


def _row_for(test_name):
  rows = [row for row in _table_rows() if re.search(rf'::{test_name}(?!\w)', row[-1])]
  assert len(rows) == 1, f'docs/faults.md needs exactly one row naming {test_name}'
  return rows[0]


def _quoted_line(test_name):
  """The one line docs/faults.md quotes for the row of `test_name`, as a regex: `{...}` stands
  for any text (a path, a number)."""
  quoted = re.findall(r'`(error: [^`]+|W[^`]*damaged[^`]+)`', ' '.join(_row_for(test_name)))
  assert quoted, f'the docs/faults.md row of {test_name} quotes no line'
  parts = re.split(r'\{[^}]*\}', quoted[0])
  return re.compile('.*?'.join(re.escape(part) for part in parts))


def _assert_table_quotes(test_name, line):
  pattern = _quoted_line(test_name)
  assert pattern.fullmatch(line), f'{line!r} does not match the docs/faults.md row ({pattern})'


def test_the_faults_table_names_existing_tests_and_every_bad_input_case():
  rows = _table_rows()
  assert len(rows) >= 20
  for row in rows:
    refs = re.findall(r'(tests/test_\w+\.py)::(\w+)(?:\[([\w-]+)\])?', row[-1])
    assert refs, f'row without a test: {row}'
    for path, name, case in refs:
      with open(os.path.join(REPO, path)) as f:
        source = f.read()
      assert re.search(rf'^def {name}\(', source, re.M), f'{path}::{name} does not exist'
      if case:
        assert f"('{case}'," in source, f'{path} has no case {case}'
  # Every bad-input case of test_bad_inputs.py has its row, quoting the text the case checks.
  spec = importlib.util.spec_from_file_location(
      'bad_inputs', os.path.join(REPO, 'tests', 'test_bad_inputs.py'))
  bad_inputs = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(bad_inputs)
  for name, _, _, expected in bad_inputs.CASES:
    named = [' '.join(row) for row in rows if f'[{name}]' in row[-1]]
    assert len(named) == 1, f'docs/faults.md needs one row for the bad-input case {name}'
    assert expected in named[0], f'the row of {name} does not quote {expected!r}'


# ----------------------------------------------------------------------------- tmpfs


@functools.cache
def _namespace_command():
  """The command prefix that runs a shell script in a private mount namespace where it may
  mount a tmpfs (an unprivileged user namespace, or plain root), or None."""
  probe = 'd=$(mktemp -d) && mount -t tmpfs -o size=1m tmpfs "$d" && umount "$d" && rmdir "$d"'
  for prefix in (['unshare', '--user', '--map-root-user', '--mount'], ['unshare', '--mount']):
    if shutil.which(prefix[0]) is None:
      return None
    done = subprocess.run(prefix + ['sh', '-c', probe], capture_output=True, text=True)
    if done.returncode == 0:
      return prefix
  return None


def _in_tmpfs(script, mount, size, timeout=400, env=None):
  """Runs bash `script` with a fresh tmpfs of `size` (e.g. '12m') mounted at `mount` (gone when
  the script ends)."""
  prefix = _namespace_command()
  if prefix is None:
    pytest.skip('no size-limited filesystem can be mounted here (unshare --user --mount and '
                'unshare --mount both refused): the full-disk rows need one')
  os.makedirs(mount, exist_ok=True)
  setup = f'set -u\nmount -t tmpfs -o size={size} tmpfs {mount}\n'
  return subprocess.run(prefix + ['bash', '-c', setup + script], cwd=REPO, env=env or _env(),
                        capture_output=True, text=True, timeout=timeout)


def _lines(path):
  with open(path) as f:
    return f.read().splitlines()


def _error_line(stderr_lines):
  """The stage's one error line, after checking that the rest is progress lines only."""
  others = [line for line in stderr_lines if not PROGRESS.match(line)]
  assert len(others) == 1 and others[0].startswith('error: '), '\n'.join(stderr_lines[-30:])
  return others[0]


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  """The smoke Wall dataset, generated once for the stage-1 runs of this file."""
  path = tmp_path_factory.mktemp('data')
  done = subprocess.run([sys.executable, '-m', 'experiments.generate_data',
                         '--config=experiments/configs/wall.py:smoke', f'--data_dir={path}'],
                        cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr
  return path


@pytest.mark.slow
def test_full_disk_is_one_line_and_the_same_command_resumes(tmp_path, data_dir):
  """1 MB: no room for the first step (its arrays' bytes), checked before training starts. Room
  for one step: step 2 is written, step 4 does not fit (the size of step 2). Space freed: the
  same command resumes from step 2 and finishes."""
  mount, out = tmp_path / 'disk', tmp_path / 'out'
  out.mkdir()
  command = ' '.join(STAGE1 + ['--config.pretrain.num_steps=6', f'--workdir={mount}/pretrain',
                               f'--data_dir={data_dir}'])
  first = _in_tmpfs(f'{command} 2>{out}/err1; echo $? >{out}/rc1', mount, '1m')
  assert first.returncode == 0, first.stderr
  assert _lines(out / 'rc1') == ['1']
  line = _error_line(_lines(out / 'err1'))
  _assert_table_quotes('test_full_disk_is_one_line_and_the_same_command_resumes', line)
  free, need = map(float, re.search(r': ([\d.]+) MB free, need about ([\d.]+) MB', line).groups())
  assert free < need and f'{mount}/pretrain/checkpoints/2' in line
  assert line.endswith('(pretrain starts again from step 0)')

  # Room for the first step (its arrays' bytes, an upper bound of what orbax writes) + 1 MB:
  # step 2 fits, and step 4 (the size step 2 took) does not while orbax compresses by < 2x.
  room = int((need + 1) * 1e6 / 1024)
  script = f'''
{command} 2>{out}/err2; echo $? >{out}/rc2
ls -a {mount}/pretrain/checkpoints >{out}/steps2
mount -t tmpfs -o remount,size=1g tmpfs {mount}
{command} --verbosity=1 >{out}/out3 2>{out}/err3; echo $? >{out}/rc3
cp -r {mount}/pretrain/encoder {out}/encoder
'''
  second = _in_tmpfs(script, mount, f'{room}k')
  assert second.returncode == 0, second.stderr
  assert _lines(out / 'rc2') == ['1'], _lines(out / 'err2')
  line = _error_line(_lines(out / 'err2'))
  _assert_table_quotes('test_full_disk_is_one_line_and_the_same_command_resumes', line)
  assert f'{mount}/pretrain/checkpoints/4:' in line, line
  assert line.endswith('rerun the same command to resume from step 2'), line
  assert sorted(_lines(out / 'steps2')) == ['.', '..', '2']  # nothing half-written
  assert _lines(out / 'rc3') == ['0'], _lines(out / 'err3')[-20:]
  assert any(re.search(r'resumed from .*checkpoints at step 2$', l) for l in _lines(out / 'err3'))
  from jepa_jax import checkpoint  # pylint: disable=g-import-not-at-top
  kind, _, params, _ = checkpoint.load_model(out / 'encoder')  # finite, every file intact
  assert kind == 'vit' and params


def _run_program(case, folder, **env):
  return [sys.executable, os.path.abspath(__file__), case, str(folder)], _env(**env)


@pytest.mark.parametrize('case,size', [('checkpoint_then_disk_filled', '30m'),
                                       ('export_too_big', '3m'),
                                       ('export_out_of_inodes', '30m,nr_inodes=8')])
def test_no_space_inside_orbax_is_the_same_one_line(tmp_path, case, size):
  """The free-space check passes (the last step compressed well; the disk filled since; or bytes
  are free but file entries are not) and TensorStore's write fails with ENOSPC: the one line
  again, no thread traceback; the finished step stays, the partial write is gone."""
  mount, out = tmp_path / 'disk', tmp_path / 'out'
  out.mkdir()
  folder = mount / 'checkpoints' if case.startswith('checkpoint') else mount
  argv, env = _run_program(case, folder)
  done = _in_tmpfs(f'{" ".join(argv)} 2>{out}/err; echo $? >{out}/rc; ls -a {folder} >{out}/left',
                   mount, size, env=env, timeout=120)
  assert done.returncode == 0, done.stderr
  assert _lines(out / 'rc') == ['1']
  stderr = _lines(out / 'err')
  assert len(stderr) == 1, '\n'.join(stderr[:40])
  _assert_table_quotes('test_no_space_inside_orbax_is_the_same_one_line', stderr[0])
  if case == 'checkpoint_then_disk_filled':
    assert stderr[0].endswith('rerun the same command to resume from step 1')
    assert f'{mount}/checkpoints/2:' in stderr[0]
    assert sorted(_lines(out / 'left')) == ['.', '..', '1']
  else:
    assert f'{mount}/model:' in stderr[0]
    assert sorted(_lines(out / 'left')) == ['.', '..']  # no partial export left
    if case == 'export_out_of_inodes':
      assert 'but no free inodes (file entries)' in stderr[0]


def test_full_disk_in_any_other_write_is_one_line(tmp_path):
  """A summary larger than the free space (any write outside the checkpointer: TensorBoard
  events, a dataset): one line, and the previous summary stays whole."""
  mount, out = tmp_path / 'disk', tmp_path / 'out'
  out.mkdir()
  argv, env = _run_program('summary_on_full_disk', mount)
  done = _in_tmpfs(f'{" ".join(argv)} 2>{out}/err; echo $? >{out}/rc; '
                   f'cp {mount}/summary.json {out}/', mount, '1m', env=env, timeout=120)
  assert done.returncode == 0, done.stderr
  assert _lines(out / 'rc') == ['1']
  stderr = _lines(out / 'err')
  assert len(stderr) == 1, '\n'.join(stderr[:40])
  _assert_table_quotes('test_full_disk_in_any_other_write_is_one_line', stderr[0])
  with open(out / 'summary.json') as f:
    assert json.load(f) == {'previous': 1}


def test_damaged_newest_step_is_one_warning_each_time(tmp_path):
  """Eight damaged newest steps restored in one process: eight one-line warnings, nothing else
  (orbax's abandoned parallel reads used to print TensorStore tracebacks, 1 run in 4)."""
  argv, env = _run_program('damaged_newest_step', tmp_path)
  done = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr
  lines = done.stderr.splitlines()
  assert len(lines) == _DAMAGED_TRIALS, done.stderr[:4000]
  for line in lines:
    _assert_table_quotes('test_damaged_newest_step_is_one_warning_each_time', line)


# ----------------------------------------------------------------------------- dead peer


def _pid_of(process_id, workdir):
  """pid of the python process `process_id` of the local_multiprocess job on `workdir`."""
  for entry in os.listdir('/proc'):
    if not entry.isdigit():
      continue
    try:
      with open(f'/proc/{entry}/cmdline', 'rb') as f:
        cmdline = f.read().split(b'\0')
      with open(f'/proc/{entry}/environ', 'rb') as f:
        environ = f.read().split(b'\0')
    except OSError:
      continue
    if (os.path.basename(cmdline[0]).startswith(b'python')
        and f'--workdir={workdir}'.encode() in cmdline
        and f'JAX_PROCESS_ID={process_id}'.encode() in environ):
      return int(entry)
  return None


@pytest.mark.slow
def test_killed_peer_process_is_one_line_from_process_0(tmp_path, data_dir):
  """Process 1 of a 2-process x 2-device stage-1 job is killed (SIGKILL) after step 2 is saved:
  process 0 says which process stopped and the step the same command resumes from, and exits;
  no JAX fatal trace."""
  workdir = tmp_path / 'pretrain'
  job = subprocess.Popen(
      ['launch/local_multiprocess.sh', '2', '2'] + STAGE1 +
      ['--config.pretrain.num_steps=100000', f'--workdir={workdir}', f'--data_dir={data_dir}'],
      cwd=REPO, env=_env(JEPA_JAX_PEER_TIMEOUT_S='8'), stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT, text=True, start_new_session=True)
  try:
    deadline = time.monotonic() + 400
    while not os.path.isdir(workdir / 'checkpoints' / '2') and job.poll() is None:
      assert time.monotonic() < deadline, 'step 2 never saved'
      time.sleep(0.2)
    victim = _pid_of(1, workdir)
    assert victim is not None and job.poll() is None
    os.kill(victim, signal.SIGKILL)
    output, _ = job.communicate(timeout=120)
  finally:
    if job.poll() is None:
      os.killpg(job.pid, signal.SIGKILL)
  assert job.returncode == 1, output
  from_0 = [line for line in output.splitlines() if line.startswith('[process 0] ')]
  # A blank line (the progress bar's closing newline, when the kill lands mid-redraw) is not
  # an error line.
  errors = [line for line in from_0 if line[len('[process 0] '):].strip()
            and not PROGRESS.match(line[len('[process 0] '):])]
  assert len(errors) == 1, output[-6000:]
  line = errors[0][len('[process 0] '):]
  _assert_table_quotes('test_killed_peer_process_is_one_line_from_process_0', line)
  stopped_at, resume = map(int, re.search(r'step ~(\d+) of pretrain .* from step (\d+)$',
                                          line).groups())
  assert line.startswith('error: process 1 stopped at step ~')
  assert 2 <= resume <= stopped_at and os.path.isdir(workdir / 'checkpoints' / str(resume))
  assert 'Check failure' not in output and 'Traceback' not in output


def test_bad_peer_timeout_is_one_line(monkeypatch):
  from jepa_jax import distributed  # pylint: disable=g-import-not-at-top
  for bad in ('1h', '0', '900'):
    monkeypatch.setenv(distributed.PEER_TIMEOUT_ENV, bad)
    with pytest.raises(ValueError) as error:
      distributed.peer_timeout_s()
    _assert_table_quotes('test_bad_peer_timeout_is_one_line', f'error: {error.value}')
    assert f"JEPA_JAX_PEER_TIMEOUT_S='{bad}'" in str(error.value)
  monkeypatch.delenv(distributed.PEER_TIMEOUT_ENV)
  assert distributed.peer_timeout_s() == 30.0
  monkeypatch.setenv(distributed.PEER_TIMEOUT_ENV, '8')
  assert distributed.peer_timeout_s() == 8.0


# ----------------------------------------------------------------------------- the program

_DAMAGED_TRIALS = 8


def _program(argv):
  """The cases the tests above run in a subprocess (argv: [prog, case, folder])."""
  from jepa_jax import checkpoint, console, outputs  # pylint: disable=g-import-not-at-top
  console.setup(0)
  case, folder = argv[1], argv[2]
  rng = np.random.default_rng(0)
  noise = {f'w{i}': rng.normal(size=(256, 256)).astype(np.float32) for i in range(40)}
  if case.startswith('export'):  # 10.5 MB of arrays
    checkpoint.save_model(os.path.join(folder, 'model'), kind='test', config={}, params=noise)
  elif case == 'checkpoint_then_disk_filled':
    # Step 1 (zeros) compresses to almost nothing, so the check before step 2 (the last step's
    # size) passes; then another writer leaves 4 MB, and the 10 MB of noise fail in TensorStore.
    ckpt = checkpoint.TrainCheckpointer(folder, save_interval_steps=1)
    try:
      ckpt.save(1, {k: np.zeros_like(v) for k, v in noise.items()})
      ckpt.wait()
      stats = os.statvfs(folder)
      with open(os.path.join(os.path.dirname(folder), 'ballast'), 'wb') as f:
        os.posix_fallocate(f.fileno(), 0, stats.f_bavail * stats.f_frsize - (4 << 20))
      ckpt.save(2, noise)
      ckpt.wait()
    finally:
      ckpt.close()
  elif case == 'summary_on_full_disk':
    outputs.write_json(os.path.join(folder, 'summary.json'), {'previous': 1})
    outputs.write_json(os.path.join(folder, 'summary.json'), {'rows': noise['w0'].tolist()})  # 1.3 MB
  elif case == 'damaged_newest_step':
    state = {f'w{i}': rng.normal(size=(64, 64)).astype(np.float32) for i in range(60)}
    for trial in range(_DAMAGED_TRIALS):
      directory = os.path.join(folder, str(trial))
      ckpt = checkpoint.TrainCheckpointer(directory, save_interval_steps=1)
      for step in (1, 2):
        ckpt.save(step, state)
        ckpt.wait()
      ckpt.close()
      for root, _, files in os.walk(os.path.join(directory, '2', 'state')):
        for name in files:
          if os.path.basename(root) == 'd':  # the array data files
            path = os.path.join(root, name)
            os.truncate(path, os.path.getsize(path) // 2)
      ckpt = checkpoint.TrainCheckpointer(directory, save_interval_steps=1)
      restored = ckpt.restore_or_none(checkpoint.abstract_like(state))
      assert ckpt.latest_step() == 1
      np.testing.assert_array_equal(restored['w0'], state['w0'])
      ckpt.close()
  else:
    raise ValueError(f'unknown case {case!r}')


if __name__ == '__main__':
  sys.path.insert(0, REPO)
  from jepa_jax import console as _console  # pylint: disable=g-import-not-at-top
  _console.run_app(_program)
