"""Training checkpoints (state + grain iterator + config) and exported models."""

import os
import shutil

import grain
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from jepa_jax import checkpoint, sharding


def _state(mesh):
  rng = np.random.default_rng(0)
  state = {'params': {'dense': {'kernel': rng.normal(size=(8, 4)).astype(np.float32),
                                'bias': rng.normal(size=(4,)).astype(np.float32)}},
           'step': np.int32(7)}
  rules = [('kernel', ('fsdp', None)), ('.*', ())]
  return jax.device_put(state, sharding.param_shardings(state, mesh, rules))


def _iterator():
  return iter(grain.MapDataset.range(100).shuffle(seed=3).batch(4).to_iter_dataset())


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
  for root, _, files in os.walk(tmp_path / 'corrupt' / 'params'):
    for name in files:  # clobber every params file (array data and tree metadata)
      with open(os.path.join(root, name), 'wb') as f:
        f.write(b'not a checkpoint')
  with pytest.raises(ValueError, match='params are missing or corrupt'):
    checkpoint.load_model(tmp_path / 'corrupt')
