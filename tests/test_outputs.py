"""Strict atomic JSON, output-folder checks and the workdir lock (jepa_jax.outputs)."""

import json
import os
import signal
import socket
import subprocess
import tempfile

from absl import logging
import jax.numpy as jnp
import numpy as np
import pytest

from jepa_jax import outputs


def test_write_json_is_strict_sorted_and_converts_arrays(tmp_path):
  path = tmp_path / 'a' / 'b' / 'summary.json'  # parents are created
  payload = {'b': np.float32(0.5), 'a': float('nan'), 'inf': -np.inf, 'arr': np.array([1, 2]),
             'jax': jnp.array([0.25, jnp.nan]), 'n': np.int64(3), 'tuple': (1, 2.0),
             7: 'int key'}
  assert outputs.write_json(path, payload) == str(path)
  text = path.read_text()
  # Python's own parser rejects NaN/Infinity when told to: the file is plain JSON.
  parsed = json.loads(text, parse_constant=lambda name: pytest.fail(f'non-JSON constant {name}'))
  assert parsed == {'a': None, 'arr': [1, 2], 'b': 0.5, 'inf': None, 'jax': [0.25, None],
                    'n': 3, 'tuple': [1, 2.0], '7': 'int key'}
  assert text == json.dumps(parsed, sort_keys=True, indent=2) + '\n'
  assert os.listdir(path.parent) == ['summary.json']  # no temporary file left


def test_write_json_failure_keeps_the_old_file(tmp_path):
  path = tmp_path / 'summary.json'
  outputs.write_json(path, {'ok': 1})
  with pytest.raises(TypeError):
    outputs.write_json(path, {'bad': object()})
  assert json.loads(path.read_text()) == {'ok': 1}
  assert os.listdir(tmp_path) == ['summary.json']


def test_write_atomically_replaces_whole_or_keeps_the_old_file(tmp_path):
  path = tmp_path / 'plot.png'
  path.write_bytes(b'old')

  def half_written(tmp):
    with open(tmp, 'wb') as f:
      f.write(b'half')
    raise RuntimeError('the plot failed')

  with pytest.raises(RuntimeError, match='the plot failed'):
    outputs.write_atomically(path, half_written)
  assert path.read_bytes() == b'old' and os.listdir(tmp_path) == ['plot.png']

  def whole(tmp):
    with open(tmp, 'wb') as f:
      f.write(b'new')

  assert outputs.write_atomically(path, whole) == str(path)
  assert path.read_bytes() == b'new' and os.listdir(tmp_path) == ['plot.png']
  assert os.stat(path).st_mode & 0o777 == 0o644


def test_write_json_only_on_process_zero(tmp_path, monkeypatch):
  monkeypatch.setattr(outputs.jax, 'process_index', lambda: 1)
  assert outputs.write_json(tmp_path / 'x.json', {'a': 1}) is None
  assert not (tmp_path / 'x.json').exists()


def test_prepare_creates_marks_and_accepts_a_rerun(tmp_path):
  path = tmp_path / 'new' / 'stage'
  assert outputs.prepare_output_dir(path, kind='pretrain') == str(path)
  assert json.loads((path / outputs.MARKER_FILENAME).read_text()) == {'kind': 'pretrain'}
  (path / 'summary.json').write_text('{}')
  assert outputs.prepare_output_dir(path, kind='pretrain') == str(path)  # ours: accepted
  assert (path / 'summary.json').read_text() == '{}'
  empty = tmp_path / 'empty'
  empty.mkdir()
  outputs.prepare_output_dir(empty, kind='plan')
  assert os.listdir(empty) == [outputs.MARKER_FILENAME]  # probe file removed


def test_the_marker_being_written_is_not_a_foreign_file(tmp_path):
  """The processes of a multi-process job prepare the same new workdir at once: process 1 may
  list it while process 0 writes the marker (write_json's temporary file beside it)."""
  path = tmp_path / 'stage'
  path.mkdir()
  fd, _ = tempfile.mkstemp(prefix=f'.{outputs.MARKER_FILENAME}.', suffix='.tmp', dir=path)
  os.close(fd)  # what write_json holds open until it renames it to the marker
  assert outputs.prepare_output_dir(path, kind='pretrain') == str(path)
  assert json.loads((path / outputs.MARKER_FILENAME).read_text()) == {'kind': 'pretrain'}


def test_prepare_refuses_foreign_and_other_kind_folders(tmp_path):
  user = tmp_path / 'user'
  user.mkdir()
  (user / 'thesis.tex').write_text('precious')
  with pytest.raises(ValueError, match=r'already holds files not written by jepa_jax .*'
                                       r"'thesis.tex'.*new or empty folder"):
    outputs.prepare_output_dir(user, kind='pretrain')
  assert os.listdir(user) == ['thesis.tex']
  ours = tmp_path / 'ours'
  outputs.prepare_output_dir(ours, kind='pretrain')
  with pytest.raises(ValueError, match="holds a 'pretrain' output, not 'plan'"):
    outputs.prepare_output_dir(ours, kind='plan')


def test_prepare_refuses_files_and_inputs(tmp_path):
  source = tmp_path / 'ckpt.pth'
  source.write_bytes(b'weights')
  with pytest.raises(ValueError, match=r'is the input .*ckpt.pth; write the output to a separate'):
    outputs.prepare_output_dir(source, kind='x', inputs=[source])
  with pytest.raises(ValueError, match='is a file, not a folder'):
    outputs.prepare_output_dir(source, kind='x')
  with pytest.raises(ValueError, match='contains the input'):
    outputs.prepare_output_dir(tmp_path, kind='x', inputs=[source])
  data = tmp_path / 'data'
  data.mkdir()
  with pytest.raises(ValueError, match='is inside the input'):
    outputs.prepare_output_dir(data / 'out', kind='x', inputs=[data])
  link = tmp_path / 'link'
  link.symlink_to(data)  # the same folder under another name
  with pytest.raises(ValueError, match='is the input'):
    outputs.prepare_output_dir(link, kind='x', inputs=[data])
  assert source.read_bytes() == b'weights' and not (data / 'out').exists()


def test_prepare_refuses_uncreatable_paths(tmp_path):
  blocker = tmp_path / 'file'
  blocker.write_text('x')
  with pytest.raises(ValueError, match=r'cannot be created or written .*folder you can write to'):
    outputs.prepare_output_dir(blocker / 'below', kind='x')  # a parent is a file
  with pytest.raises(ValueError, match='cannot be created or written'):
    outputs.prepare_output_dir('/proc/jepa_jax_cannot_exist', kind='x')  # root cannot write here


def test_prepare_refuses_read_only_folder(tmp_path):
  if os.geteuid() == 0:
    pytest.skip('root writes into read-only folders; /proc covers the root case above')
  folder = tmp_path / 'ro'
  folder.mkdir()
  folder.chmod(0o500)
  try:
    with pytest.raises(ValueError, match='cannot be created or written'):
      outputs.prepare_output_dir(folder, kind='x')
  finally:
    folder.chmod(0o700)


def test_lock_is_exclusive_and_released(tmp_path):
  with outputs.WorkdirLock(tmp_path) as lock:
    holder = json.loads((tmp_path / outputs.LOCK_FILENAME).read_text())
    assert holder['pid'] == os.getpid() and holder['host'] == socket.gethostname()
    with pytest.raises(outputs.WorkdirBusyError,
                       match=rf'in use by pid {os.getpid()} on {socket.gethostname()} since '):
      outputs.WorkdirLock(tmp_path).acquire()
    assert lock.lock_path == str(tmp_path / outputs.LOCK_FILENAME)
  assert not (tmp_path / outputs.LOCK_FILENAME).exists()
  with outputs.WorkdirLock(tmp_path):  # free again
    pass


def test_lock_held_by_a_live_process_blocks_until_it_is_killed(tmp_path):
  # Another process's lock, as WorkdirLock writes it (a real process, so liveness is real).
  holder = subprocess.Popen(['sleep', '60'])
  record = {'host': socket.gethostname(), 'pid': holder.pid, 'since': '2026-12-01T10:00:00',
            'pid_start_ticks': outputs._process_start_ticks(holder.pid)}
  (tmp_path / outputs.LOCK_FILENAME).write_text(json.dumps(record))
  try:
    with pytest.raises(outputs.WorkdirBusyError,
                       match=f'in use by pid {holder.pid} .* since 2026-12-01T10:00:00'):
      outputs.WorkdirLock(tmp_path).acquire()
  finally:
    holder.send_signal(signal.SIGKILL)  # as a killed job: its lock file stays behind
    holder.wait()
  assert (tmp_path / outputs.LOCK_FILENAME).exists()
  warnings = []
  def collect(record):
    warnings.append(record.getMessage())
    return True
  logging.get_absl_logger().addFilter(collect)
  try:
    with outputs.WorkdirLock(tmp_path):
      assert json.loads((tmp_path / outputs.LOCK_FILENAME).read_text())['pid'] == os.getpid()
  finally:
    logging.get_absl_logger().removeFilter(collect)
  assert len(warnings) == 1 and f'lock of pid {holder.pid}' in warnings[0]


def test_lock_of_a_reused_pid_is_stale(tmp_path):
  """A lock naming a live pid whose process started at another time is stale (pid reuse)."""
  record = {'host': socket.gethostname(), 'pid': os.getpid(), 'since': 'long ago',
            'pid_start_ticks': outputs._process_start_ticks(os.getpid()) + 1}
  (tmp_path / outputs.LOCK_FILENAME).write_text(json.dumps(record))
  with outputs.WorkdirLock(tmp_path):
    pass


def test_lock_from_another_host_is_never_taken_over(tmp_path):
  record = {'host': 'other-host', 'pid': 1, 'since': '2026-01-01T00:00:00'}
  (tmp_path / outputs.LOCK_FILENAME).write_text(json.dumps(record))
  with pytest.raises(outputs.WorkdirBusyError,
                     match=r'in use by pid 1 on other-host since 2026-01-01T00:00:00; .*delete'):
    outputs.WorkdirLock(tmp_path).acquire()


def test_lock_only_on_process_zero(tmp_path, monkeypatch):
  monkeypatch.setattr(outputs.jax, 'process_index', lambda: 1)
  with outputs.WorkdirLock(tmp_path):
    assert not (tmp_path / outputs.LOCK_FILENAME).exists()
