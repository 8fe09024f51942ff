"""Meshes, partition rules and a sharded train step on 8 fake CPU devices (see conftest.py)."""

import os
import subprocess

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from jepa_jax import distributed, sharding
from jepa_jax.training import adamw

RULES = [
    (r'.*/kernel', ('fsdp', None)),
    (r'.*/bias', ('fsdp',)),
    (r'.*', ()),
]


def test_eight_devices_available():
  assert jax.device_count() == 8, 'tests/conftest.py must set 8 fake CPU devices'


def test_make_mesh_resolves_rest_axis():
  mesh = sharding.make_mesh({'data': -1, 'fsdp': 2})
  assert dict(mesh.shape) == {'data': 4, 'fsdp': 2}
  assert mesh.axis_names == ('data', 'fsdp')
  assert sorted(d.id for d in mesh.devices.flat) == sorted(d.id for d in jax.devices())
  single = sharding.make_mesh({'data': -1, 'fsdp': 1}, devices=jax.devices()[:1])
  assert dict(single.shape) == {'data': 1, 'fsdp': 1}


@pytest.mark.parametrize('axes, message', [
    ({'data': 3}, 'multiple of 3'),
    ({'data': -1, 'fsdp': 3}, 'multiple of 3'),
    ({'data': 2, 'fsdp': 2}, 'use 4 devices'),
    ({'data': -1, 'fsdp': -1}, 'only one axis'),
    ({'data': 0}, 'positive'),
    ({}, 'at least one axis'),
])
def test_make_mesh_errors(axes, message):
  with pytest.raises(ValueError, match=message):
    sharding.make_mesh(axes)


def test_partition_spec_first_match_and_divisibility():
  mesh = sharding.make_mesh({'data': 4, 'fsdp': 2})
  assert sharding.partition_spec_for('enc/Dense_0/kernel', (6, 8), RULES, mesh) == P('fsdp', None)
  # 5 is not divisible by fsdp=2: that dimension is replicated instead.
  assert sharding.partition_spec_for('enc/Dense_0/kernel', (5, 8), RULES, mesh) == P(None, None)
  assert sharding.partition_spec_for('enc/Dense_0/bias', (8,), RULES, mesh) == P('fsdp')
  assert sharding.partition_spec_for('enc/LayerNorm_0/scale', (8,), RULES, mesh) == P()
  # A tuple entry uses the product of the axes (4 * 2 = 8).
  rules = [('.*', (('data', 'fsdp'), None))]
  assert sharding.partition_spec_for('x', (16, 3), rules, mesh) == P(('data', 'fsdp'), None)
  assert sharding.partition_spec_for('x', (12, 3), rules, mesh) == P(None, None)
  json_rules = [['.*', [['data', 'fsdp'], None]]]  # the same rule after a JSON round trip
  assert sharding.partition_spec_for('x', (16, 3), json_rules, mesh) == P(('data', 'fsdp'), None)


def test_partition_spec_errors_name_the_param():
  mesh = sharding.make_mesh({'data': 4, 'fsdp': 2})
  with pytest.raises(ValueError, match="'enc/bias'.*rank 1"):
    sharding.partition_spec_for('enc/bias', (8,), [('.*', ('fsdp', None))], mesh)
  with pytest.raises(ValueError, match="no partition rule matches parameter 'enc/bias'"):
    sharding.partition_spec_for('enc/bias', (8,), [('kernel', ('fsdp',))], mesh)
  with pytest.raises(ValueError, match="mesh axis 'model'"):
    sharding.partition_spec_for('enc/kernel', (8, 8), [('.*', ('model', None))], mesh)


def test_data_sharding_and_shard_batch():
  mesh = sharding.make_mesh({'data': 4, 'fsdp': 2})
  assert sharding.data_sharding(mesh).spec == P(('data', 'fsdp'))
  assert sharding.replicated(mesh).spec == P()
  x = np.arange(16 * 3, dtype=np.float32).reshape(16, 3)
  batch = sharding.shard_batch({'x': x, 'y': x[:, 0]}, mesh)
  assert batch['x'].sharding.is_equivalent_to(sharding.data_sharding(mesh), 2)
  assert {s.data.shape for s in batch['x'].addressable_shards} == {(2, 3)}
  np.testing.assert_array_equal(np.asarray(batch['x']), x)
  with pytest.raises(ValueError, match='divisible by 8'):
    sharding.shard_batch({'x': x[:12]}, mesh)
  data_only = sharding.make_mesh({'data': -1}, devices=jax.devices()[:2])
  assert sharding.data_sharding(data_only).spec == P(('data',))


class _MLP(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Dense(16)(x))
    x = nn.LayerNorm()(x)
    return nn.Dense(4)(x)


def _train_setup():
  model = _MLP()
  rng = np.random.default_rng(0)
  x = rng.normal(size=(16, 6)).astype(np.float32)
  y = rng.normal(size=(16, 4)).astype(np.float32)
  params = model.init(jax.random.key(0), x[:1])['params']
  tx = adamw(learning_rate=1e-2, weight_decay=1e-2, grad_clip_norm=1.0)

  def train_step(state, batch):
    def loss_fn(p):
      pred = model.apply({'params': p}, batch['x'])
      return jnp.mean((pred - batch['y']) ** 2)
    loss, grads = jax.value_and_grad(loss_fn)(state['params'])
    updates, opt_state = tx.update(grads, state['opt_state'], state['params'])
    return {'params': optax.apply_updates(state['params'], updates),
            'opt_state': opt_state}, loss

  state = {'params': params, 'opt_state': tx.init(params)}
  return train_step, state, {'x': x, 'y': y}


def test_sharded_train_step_matches_single_device():
  train_step, state, batch = _train_setup()

  single_state = jax.device_put(state, jax.devices()[0])
  single_step = jax.jit(train_step)
  single_losses = []
  for _ in range(3):
    single_state, loss = single_step(single_state, batch)
    single_losses.append(float(loss))

  mesh = sharding.make_mesh({'data': 4, 'fsdp': 2})
  state_sh = sharding.param_shardings(state, mesh, RULES)
  batch_sh = jax.tree_util.tree_map(lambda _: sharding.data_sharding(mesh), batch)
  step = jax.jit(train_step, in_shardings=(state_sh, batch_sh),
                 out_shardings=(state_sh, sharding.replicated(mesh)))
  sharded_state = jax.device_put(state, state_sh)
  sharded_batch = sharding.shard_batch(batch, mesh)
  losses = []
  for _ in range(3):
    sharded_state, loss = step(sharded_state, sharded_batch)
    losses.append(float(loss))

  np.testing.assert_allclose(losses, single_losses, rtol=1e-5)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                         sharded_state, single_state)

  # Parameters and Adam moments are laid out as the rules say.
  params = sharded_state['params']
  assert params['Dense_0']['kernel'].sharding.spec == P('fsdp', None)  # (6, 16)
  assert {s.data.shape for s in params['Dense_0']['kernel'].addressable_shards} == {(3, 16)}
  assert params['Dense_0']['bias'].sharding.spec == P('fsdp')  # (16,)
  assert params['Dense_1']['bias'].sharding.spec == P('fsdp')  # (4,)
  assert params['LayerNorm_0']['scale'].sharding.spec == P()
  mu = sharded_state['opt_state'][1][0].mu
  assert mu['Dense_0']['kernel'].sharding.spec == P('fsdp', None)
  assert isinstance(mu['Dense_1']['kernel'].sharding, NamedSharding)


_WORKER = r'''
import sys
import grain
import jax
import jax.numpy as jnp
import numpy as np
from jepa_jax import checkpoint, distributed, sharding

assert distributed.maybe_initialize()
pid, workdir = jax.process_index(), sys.argv[1]
mesh = sharding.make_mesh({'data': -1, 'fsdp': 2})
# Each process feeds its own rows; the global batch stacks them in process order.
local = np.arange(4, dtype=np.float32).reshape(4, 1) + 100 * pid
batch = sharding.shard_batch({'x': local}, mesh)
total = jax.jit(jnp.sum, out_shardings=sharding.replicated(mesh))(batch['x'])

state = {'w': jnp.arange(8.0).reshape(4, 2)}
state = jax.device_put(state, sharding.param_shardings(state, mesh, [('.*', ('fsdp',))]))
it = iter(grain.MapDataset.range(10).batch(2).to_iter_dataset())
for _ in range(pid + 1):  # the processes are at different positions of their own data
  next(it)
ckpt = checkpoint.TrainCheckpointer(workdir, save_interval_steps=1)
ckpt.save(1, state, it)
ckpt.wait()
want_next = next(it)
new_it = iter(grain.MapDataset.range(10).batch(2).to_iter_dataset())
restored = checkpoint.TrainCheckpointer(workdir, save_interval_steps=1).restore_or_none(
    checkpoint.abstract_like(state), new_it)
w = jax.jit(lambda x: x, out_shardings=sharding.replicated(mesh))(restored['w'])
print('RESULT', pid, jax.process_count(), jax.device_count(), batch['x'].shape, float(total),
      bool(np.array_equal(np.asarray(w), np.arange(8.0).reshape(4, 2))),
      bool(np.array_equal(next(new_it), want_next)), flush=True)
'''


def test_two_processes_share_a_mesh_and_checkpoint(tmp_path):
  """launch/local_multiprocess.sh: 2 CPU processes x 2 devices form one 4-device job."""
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  (tmp_path / 'worker.py').write_text(_WORKER)
  env = {**os.environ, 'PYTHONPATH': repo}
  result = subprocess.run(
      [os.path.join(repo, 'launch', 'local_multiprocess.sh'), '2', '2', 'python',
       str(tmp_path / 'worker.py'), str(tmp_path / 'ckpt')],
      env=env, capture_output=True, text=True, timeout=120, check=False)
  lines = sorted(l.split('RESULT ')[1] for l in result.stdout.splitlines() if 'RESULT ' in l)
  assert result.returncode == 0 and len(lines) == 2, result.stdout[-3000:]
  # Global batch (8, 1); sum of rows 0..3 from process 0 and 100..103 from process 1.
  assert lines == ['0 2 4 (8, 1) 412.0 True True', '1 2 4 (8, 1) 412.0 True True']
  assert {'process_0-of-2.json', 'process_1-of-2.json'} <= set(
      os.listdir(tmp_path / 'ckpt' / '1' / 'data_iter'))


_DISTRIBUTED_ENV = ('JAX_COORDINATOR_ADDRESS', 'JAX_NUM_PROCESSES', 'JAX_PROCESS_ID',
                    'JEPA_JAX_DISTRIBUTED', 'TPU_WORKER_HOSTNAMES', 'SLURM_NTASKS',
                    'OMPI_COMM_WORLD_SIZE')


def test_maybe_initialize_is_a_no_op_for_single_process_runs(monkeypatch):
  for name in _DISTRIBUTED_ENV:
    monkeypatch.delenv(name, raising=False)
  assert distributed.maybe_initialize() is False
  monkeypatch.setenv('SLURM_NTASKS', '1')
  monkeypatch.setenv('TPU_WORKER_HOSTNAMES', 'localhost')
  monkeypatch.setenv('JEPA_JAX_DISTRIBUTED', '0')
  assert distributed.maybe_initialize() is False
  monkeypatch.setenv('JAX_COORDINATOR_ADDRESS', 'localhost:1234')
  monkeypatch.setenv('JAX_NUM_PROCESSES', '1')
  assert distributed.maybe_initialize() is False


def test_maybe_initialize_errors(monkeypatch):
  for name in _DISTRIBUTED_ENV:
    monkeypatch.delenv(name, raising=False)
  monkeypatch.setenv('JAX_COORDINATOR_ADDRESS', 'localhost:1234')
  with pytest.raises(ValueError, match='set JAX_NUM_PROCESSES and JAX_PROCESS_ID'):
    distributed.maybe_initialize()
  monkeypatch.setenv('JAX_NUM_PROCESSES', 'two')
  with pytest.raises(ValueError, match="JAX_NUM_PROCESSES='two' must be an integer"):
    distributed.maybe_initialize()
