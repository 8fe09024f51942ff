"""Training checkpoints (state + grain iterator + config) and exported models."""

import os
import shutil

from absl import logging
import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from jax.sharding import PartitionSpec as P

from jepa_jax import checkpoint, outputs, sharding


def _state(mesh):
  rng = np.random.default_rng(0)
  state = {'params': {'dense': {'kernel': rng.normal(size=(8, 4)).astype(np.float32),
                                'bias': rng.normal(size=(4,)).astype(np.float32)}},
           'step': np.int32(7)}
  rules = [('kernel', ('fsdp', None)), ('.*', ())]
  return jax.device_put(state, sharding.param_shardings(state, mesh, rules))


def _iterator():
  return iter(grain.MapDataset.range(100).shuffle(seed=3).batch(4).to_iter_dataset())


def _iterator_at(steps):
  it = _iterator()
  for _ in range(steps):
    next(it)
  return it


def _assert_tree_equal(a, b):
  jax.tree_util.tree_map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)),
                         a, b)


def test_round_trip_state_iterator_and_config(tmp_path):
  mesh = sharding.make_mesh({'data': 4, 'fsdp': 2})
  state = _state(mesh)
  it = _iterator()
  for _ in range(3):
    next(it)
  ckpt = checkpoint.TrainCheckpointer(tmp_path / 'ckpt', save_interval_steps=1,
                                      config={'lr': 1e-3, 'mesh': {'data': -1}})
  assert ckpt.save(3, state, it)
  ckpt.wait()
  expected_next = [next(it) for _ in range(2)]  # the uninterrupted continuation

  fresh = checkpoint.TrainCheckpointer(tmp_path / 'ckpt', save_interval_steps=1)
  assert fresh.latest_step() == 3
  new_it = _iterator()
  restored = fresh.restore_or_none(checkpoint.abstract_like(state), new_it)
  _assert_tree_equal(restored, state)
  # Params land with the target's shardings.
  assert restored['params']['dense']['kernel'].sharding.spec == P('fsdp', None)
  kernel = restored['params']['dense']['kernel']
  assert {s.data.shape for s in kernel.addressable_shards} == {(4, 4)}
  for want in expected_next:
    np.testing.assert_array_equal(next(new_it), want)
  assert fresh.restore_config() == {'lr': 1e-3, 'mesh': {'data': -1}}


def test_restore_into_a_different_layout(tmp_path):
  mesh = sharding.make_mesh({'data': 4, 'fsdp': 2})
  state = _state(mesh)
  ckpt = checkpoint.TrainCheckpointer(tmp_path, save_interval_steps=1)
  ckpt.save(1, state)
  ckpt.wait()
  assert ckpt.restore_config() is None  # saved without a config
  target = jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding.replicated(mesh)), state)
  restored = ckpt.restore_or_none(target)
  assert restored['params']['dense']['kernel'].sharding.spec == P()
  _assert_tree_equal(restored, state)


def test_empty_directory_restores_none(tmp_path):
  ckpt = checkpoint.TrainCheckpointer(tmp_path, save_interval_steps=1)
  assert ckpt.latest_step() is None
  assert ckpt.restore_or_none({'x': jax.ShapeDtypeStruct((2,), jnp.float32)}) is None
  assert ckpt.restore_config() is None


def test_periodic_forced_and_max_to_keep(tmp_path):
  ckpt = checkpoint.TrainCheckpointer(tmp_path, save_interval_steps=2, max_to_keep=2)
  state = {'w': jnp.zeros(3)}
  saved = [ckpt.save(step, {'w': state['w'] + step}) for step in range(1, 6)]
  assert saved == [False, True, False, True, False]
  assert ckpt.save(5, {'w': state['w'] + 5}, force=True)
  ckpt.wait()
  assert sorted(int(d) for d in os.listdir(tmp_path) if d.isdigit()) == [4, 5]
  np.testing.assert_array_equal(ckpt.restore_or_none(state)['w'], np.full(3, 5.0))


def test_half_written_step_is_never_restored(tmp_path):
  ckpt = checkpoint.TrainCheckpointer(tmp_path, save_interval_steps=1)
  ckpt.save(2, {'w': jnp.full(3, 2.0)})
  ckpt.wait()
  ckpt.close()
  # What a job killed while writing step 3 leaves behind: only a temporary directory.
  partial = tmp_path / '3.orbax-checkpoint-tmp'  # orbax's temporary name for step 3
  (partial / 'state').mkdir(parents=True)
  (partial / 'state' / 'garbage').write_bytes(b'\x00' * 10)
  fresh = checkpoint.TrainCheckpointer(tmp_path, save_interval_steps=1)
  assert fresh.latest_step() == 2
  np.testing.assert_array_equal(fresh.restore_or_none({'w': jnp.zeros(3)})['w'], np.full(3, 2.0))


def test_bad_save_interval():
  with pytest.raises(ValueError, match='save_interval_steps'):
    checkpoint.TrainCheckpointer('/tmp/unused', save_interval_steps=0)


def _export(path):
  params = {'enc': {'kernel': np.arange(6, dtype=np.float32).reshape(2, 3),
                    'bias': np.ones(3, np.float32)}}
  config = {'width': 3, 'pos_embed': 'sincos3d', 'grid': [1, 2, 2]}
  extra = {'stats': {'mean': np.array([0.5, -1.0]), 'std': np.array([2.0, 3.0])}, 'epoch': 4}
  checkpoint.save_model(path, kind='vit', config=config, params=params, extra=extra)
  return params, config, extra


def test_save_load_model_round_trip(tmp_path):
  params, config, extra = _export(tmp_path / 'encoder')
  kind, got_config, got_params, got_extra = checkpoint.load_model(tmp_path / 'encoder',
                                                                  expected_kind='vit')
  assert kind == 'vit'
  assert got_config == config
  _assert_tree_equal(got_params, params)
  assert got_extra['epoch'] == 4
  np.testing.assert_array_equal(got_extra['stats']['mean'], extra['stats']['mean'])
  assert got_extra['stats']['std'].dtype == np.float64
  # Exporting again overwrites.
  checkpoint.save_model(tmp_path / 'encoder', kind='vit', config=config,
                        params={'w': np.zeros(2, np.float32)})
  assert set(checkpoint.load_model(tmp_path / 'encoder')[2]) == {'w'}


def test_load_model_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match='does not exist'):
    checkpoint.load_model(tmp_path / 'missing')
  (tmp_path / 'not_a_model').mkdir()
  (tmp_path / 'not_a_model' / 'README').write_text('hello')
  with pytest.raises(ValueError, match='not an exported model'):
    checkpoint.load_model(tmp_path / 'not_a_model')
  _export(tmp_path / 'model')
  with pytest.raises(ValueError, match="holds a 'vit' model, expected 'world_model'"):
    checkpoint.load_model(tmp_path / 'model', expected_kind='world_model')
  shutil.copytree(tmp_path / 'model', tmp_path / 'corrupt')
  # Without the size record (as in an export by an older version) orbax meets the damage.
  os.remove(tmp_path / 'corrupt' / checkpoint.EXPORT_SIZES_FILENAME)
  for root, _, files in os.walk(tmp_path / 'corrupt' / 'params'):
    for name in files:  # clobber every params file (array data and tree metadata)
      with open(os.path.join(root, name), 'wb') as f:
        f.write(b'not a checkpoint')
  with pytest.raises(ValueError, match='params are missing or corrupt'):
    checkpoint.load_model(tmp_path / 'corrupt')


# ----------------------------------------------------------------------------- damaged steps


def _adam_state(width):
  """A train state as the stages hold it: params, optax state (namedtuples), step."""
  params = {'blocks_0': {'kernel': jnp.arange(width * 3, dtype=jnp.float32).reshape(width, 3)},
            'head': {'bias': jnp.ones(3)}}
  return {'params': params, 'opt': optax.adamw(1e-3).init(params), 'step': jnp.int32(0)}


def _saved_steps(directory, steps, data_iter=None):
  ckpt = checkpoint.TrainCheckpointer(directory, save_interval_steps=1, config={'lr': 0.1})
  for step in steps:
    if data_iter is not None:
      next(data_iter)
    state = jax.tree_util.tree_map(lambda x: x + step, _adam_state(4))
    ckpt.save(step, state, data_iter)
    ckpt.wait()
  ckpt.close()


def _truncate_arrays(step_dir):
  """Halves the array data files of a step (the top-level `d/` files hold the data)."""
  files = [f for f in (step_dir / 'state' / 'd').iterdir()]
  assert files
  for f in files:
    with open(f, 'r+b') as handle:
      handle.truncate(f.stat().st_size // 2)


@pytest.fixture
def absl_warnings():
  messages = []

  def collect(record):
    if record.levelno >= logging.WARNING:
      messages.append(record.getMessage())
    return True

  logging.get_absl_logger().addFilter(collect)
  yield messages
  logging.get_absl_logger().removeFilter(collect)


def test_damaged_latest_step_falls_back_to_the_newest_intact_one(tmp_path, absl_warnings):
  it = _iterator()
  _saved_steps(tmp_path, [1, 2, 3], it)
  expected_after_2 = next(_iterator_at(2))  # the batch that follows step 2
  _truncate_arrays(tmp_path / '3')
  ckpt = checkpoint.TrainCheckpointer(tmp_path, save_interval_steps=1)
  new_it = _iterator()
  restored = ckpt.restore_or_none(checkpoint.abstract_like(_adam_state(4)), new_it)
  np.testing.assert_array_equal(restored['params']['head']['bias'], np.full(3, 3.0))  # step 2
  np.testing.assert_array_equal(next(new_it), expected_after_2)
  assert ckpt.latest_step() == 2 and ckpt.restore_config() == {'lr': 0.1}
  assert len(absl_warnings) == 1 and '\n' not in absl_warnings[0]
  assert 'step 3 damaged' in absl_warnings[0] and 'resuming from step 2' in absl_warnings[0]
  aside = os.listdir(tmp_path / checkpoint.CORRUPT_STEPS_DIRNAME)
  assert len(aside) == 1 and aside[0].startswith('3.')
  # Training continues: step 3 can be saved again (orbax skips steps <= the latest one).
  assert ckpt.save(3, restored, new_it)
  ckpt.wait()
  assert ckpt.latest_step() == 3


def test_every_step_damaged_is_one_error(tmp_path):
  _saved_steps(tmp_path, [1, 2])
  for step in ('1', '2'):
    _truncate_arrays(tmp_path / step)
  ckpt = checkpoint.TrainCheckpointer(tmp_path, save_interval_steps=1)
  with pytest.raises(ValueError) as info:
    ckpt.restore_or_none(checkpoint.abstract_like(_adam_state(4)))
  message = str(info.value)
  assert '\n' not in message and 'TensorStore' not in message and len(message) < 600
  assert f'every checkpoint step in {tmp_path} is damaged' in message
  assert f'delete {tmp_path} to start the stage afresh' in message


def test_resuming_a_changed_model_says_so_in_one_line(tmp_path):
  _saved_steps(tmp_path, [1])
  ckpt = checkpoint.TrainCheckpointer(tmp_path, save_interval_steps=1)
  wider = _adam_state(6)  # kernel (6, 3) instead of (4, 3)
  wider['params']['blocks_1'] = {'kernel': jnp.zeros((6, 3))}  # one more block
  with pytest.raises(checkpoint.IncompatibleCheckpointError) as info:
    ckpt.restore_or_none(checkpoint.abstract_like(wider))
  message = str(info.value)
  assert '\n' not in message and 'partial_restore' not in message
  # 3 kernels differ in shape (params, adam mu, adam nu), 1 leaf is new: the first 3 listed.
  assert '4 differing leaves' in message and '; 1 more)' in message
  assert 'opt/0/mu/blocks_0/kernel: saved (4, 3), model (6, 3)' in message
  assert 'rerun with the original config, or use a fresh --workdir' in message
  assert sorted(os.listdir(tmp_path)) == ['1']  # nothing set aside


# ----------------------------------------------------------------------------- exports


def test_truncated_export_names_the_file_in_one_line(tmp_path):
  _export(tmp_path / 'encoder')
  data_file = next((tmp_path / 'encoder' / 'params' / 'd').iterdir())
  size = data_file.stat().st_size
  with open(data_file, 'r+b') as handle:
    handle.truncate(size // 2)
  with pytest.raises(ValueError) as info:
    checkpoint.load_model(tmp_path / 'encoder')
  message = str(info.value)
  assert '\n' not in message
  assert f'{data_file} has {size // 2} bytes, the export wrote {size}' in message
  assert 're-run the stage that wrote it' in message
  # Without the size record, orbax meets the truncation: still one line naming the file.
  os.remove(tmp_path / 'encoder' / checkpoint.EXPORT_SIZES_FILENAME)
  with pytest.raises(ValueError) as info:
    checkpoint.load_model(tmp_path / 'encoder')
  assert '\n' not in str(info.value) and info.value.__suppress_context__
  assert f'params are missing or corrupt at {data_file} (' in str(info.value)


def test_export_replaces_atomically_and_keeps_the_output_marker(tmp_path, monkeypatch):
  path = tmp_path / 'export'
  outputs.prepare_output_dir(path, kind='converted_checkpoint')
  params, _, _ = _export(path)
  assert (path / outputs.MARKER_FILENAME).exists()

  def crash(self, directory, *args, **kwargs):  # a job killed in the middle of the export
    os.makedirs(directory)
    raise KeyboardInterrupt
  monkeypatch.setattr(checkpoint.ocp.Checkpointer, 'save', crash)
  with pytest.raises(KeyboardInterrupt):
    checkpoint.save_model(path, kind='vit', config={}, params={'w': np.zeros(1, np.float32)})
  monkeypatch.undo()
  _assert_tree_equal(checkpoint.load_model(path)[2], params)  # the old export is intact
  checkpoint.save_model(path, kind='vit', config={}, params={'w': np.zeros(1, np.float32)})
  assert set(checkpoint.load_model(path)[2]) == {'w'}
  assert (path / outputs.MARKER_FILENAME).exists()
  assert sorted(os.listdir(tmp_path)) == ['export']  # no staging folder left


def test_export_never_replaces_foreign_files(tmp_path):
  (tmp_path / 'notes.txt').write_text('mine')
  with pytest.raises(ValueError, match='exists and is not an exported model'):
    checkpoint.save_model(tmp_path, kind='vit', config={}, params={'w': np.zeros(1)})
  with pytest.raises(ValueError, match='exists and is not an exported model'):
    checkpoint.save_model(tmp_path / 'notes.txt', kind='vit', config={}, params={'w': np.zeros(1)})
  assert (tmp_path / 'notes.txt').read_text() == 'mine'


def test_non_finite_params_are_never_exported_nor_loaded(tmp_path):
  bad = {'enc': {'kernel': np.array([1.0, np.nan, np.inf], np.float32)},
         'count': np.array([1], np.int32)}
  with pytest.raises(ValueError, match=r'non-finite values at enc/kernel \(2 of 3 values\)'):
    checkpoint.save_model(tmp_path / 'm', kind='vit', config={}, params=bad)
  assert not (tmp_path / 'm').exists()
  # An export written by something else (plain orbax) is refused when loaded.
  with ocp.Checkpointer(checkpoint._model_handler()) as writer:
    writer.save(str(tmp_path / 'm'), args=ocp.args.Composite(
        params=ocp.args.StandardSave(bad),
        metadata=ocp.args.JsonSave({'kind': 'vit', 'config': {}, 'extra': {}})))
  with pytest.raises(ValueError, match=r'holds non-finite params at enc/kernel .*retrain'):
    checkpoint.load_model(tmp_path / 'm')


def test_non_finite_check_covers_bfloat16_and_skips_integers():
  assert checkpoint.first_non_finite_leaf(
      {'a': np.zeros(2, np.int32), 'b': jnp.array([1.0, jnp.inf, jnp.nan], jnp.bfloat16)}
  ) == 'b (2 of 3 values)'
  assert checkpoint.first_non_finite_leaf({'a': jnp.ones(2, jnp.bfloat16), 'n': 3}) is None
