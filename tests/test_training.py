"""Optimizer (masked AdamW + clipping + schedules), EMA, metrics writer and the resumable loop."""

import functools
import glob
import struct

import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jepa_jax import sharding, training
from jepa_jax.checkpoint import TrainCheckpointer


def _hand_adamw(params, grads_seq, *, lr, wd, clip, b1=0.9, b2=0.999, eps=1e-8):
  """float64 numpy AdamW: global-norm clip, bias-corrected moments, decay on ndim >= 2 only."""
  p = {k: np.asarray(v, np.float64) for k, v in params.items()}
  m = {k: np.zeros_like(v) for k, v in p.items()}
  v = {k: np.zeros_like(x) for k, x in p.items()}
  for t, grads in enumerate(grads_seq, start=1):
    g = {k: np.asarray(x, np.float64) for k, x in grads.items()}
    norm = np.sqrt(sum(np.sum(x ** 2) for x in g.values()))
    scale = min(1.0, clip / norm)
    for k in p:
      gk = g[k] * scale
      m[k] = b1 * m[k] + (1 - b1) * gk
      v[k] = b2 * v[k] + (1 - b2) * gk ** 2
      m_hat, v_hat = m[k] / (1 - b1 ** t), v[k] / (1 - b2 ** t)
      decay = wd * p[k] if p[k].ndim >= 2 else 0.0
      p[k] = p[k] - lr * (m_hat / (np.sqrt(v_hat) + eps) + decay)
  return p


def test_adamw_masks_weight_decay_to_matrices_and_clips():
  rng = np.random.default_rng(0)
  params = {'kernel': rng.normal(size=(3, 2)).astype(np.float32),
            'bias': rng.normal(size=(2,)).astype(np.float32),
            'scale': 1 + rng.normal(size=(2,)).astype(np.float32)}
  # Gradients large enough that clipping to norm 1 is active, then small enough that it is not.
  grads_seq = [{k: 5 * rng.normal(size=x.shape).astype(np.float32) for k, x in params.items()},
               {k: 0.01 * rng.normal(size=x.shape).astype(np.float32) for k, x in params.items()}]
  tx = training.adamw(learning_rate=0.1, weight_decay=0.5, grad_clip_norm=1.0)

  @jax.jit
  def two_steps(p):
    state = tx.init(p)
    for grads in grads_seq:
      updates, state = tx.update(grads, state, p)
      p = optax.apply_updates(p, updates)
    return p

  p = two_steps(params)
  want = _hand_adamw(params, grads_seq, lr=0.1, wd=0.5, clip=1.0)
  for k in params:
    np.testing.assert_allclose(p[k], want[k], rtol=1e-5, atol=1e-6)
  assert training.decay_mask(params) == {'kernel': True, 'bias': False, 'scale': False}


def test_schedules_closed_form():
  sched = training.make_schedule(learning_rate=2.0, schedule='warmup_cosine', warmup_steps=10,
                                 total_steps=110, final_lr_ratio=0.1)
  for step, want in [(0, 0.0), (5, 1.0), (10, 2.0), (60, 0.2 + 1.8 * 0.5), (110, 0.2),
                     (35, 0.2 + 1.8 * 0.5 * (1 + np.cos(np.pi * 0.25)))]:
    np.testing.assert_allclose(float(sched(step)), want, rtol=1e-5, atol=1e-7)
  const = training.make_schedule(learning_rate=2.0, warmup_steps=4)
  np.testing.assert_allclose([float(const(s)) for s in (0, 2, 4, 100)], [0, 1, 2, 2], rtol=1e-6)
  assert float(training.make_schedule(learning_rate=3.0)(123)) == 3.0
  with pytest.raises(ValueError, match='unknown lr schedule'):
    training.make_schedule(learning_rate=1.0, schedule='linear')
  with pytest.raises(ValueError, match='total_steps'):
    training.make_schedule(learning_rate=1.0, schedule='warmup_cosine', warmup_steps=5)


def test_ema_update_closed_form():
  target = {'a': jnp.full((2, 3), 4.0), 'b': jnp.array(-2.0)}
  online = {'a': jnp.full((2, 3), 1.0), 'b': jnp.array(3.0)}
  m, n = 0.9, 5
  update = jax.jit(training.ema_update)
  for _ in range(n):
    target = update(target, online, jnp.float32(m))
  # Constant online weights: t_n = m^n t_0 + (1 - m^n) o.
  np.testing.assert_allclose(target['a'], np.full((2, 3), m ** n * 4 + (1 - m ** n) * 1), rtol=1e-6)
  np.testing.assert_allclose(target['b'], m ** n * -2 + (1 - m ** n) * 3, atol=1e-6)


def _read_scalars(logdir):
  """Parses tensorboard event files (TFRecord framing) into {tag: [(step, value)]}."""
  from tensorboardX.proto import event_pb2
  out = {}
  for path in glob.glob(f'{logdir}/events.out.tfevents.*'):
    data = open(path, 'rb').read()
    pos = 0
    while pos < len(data):
      (length,) = struct.unpack('<Q', data[pos:pos + 8])
      event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
      pos += 12 + length + 4
      for value in event.summary.value:
        out.setdefault(value.tag, []).append((event.step, value.simple_value))
  return out


def test_metrics_writer(tmp_path):
  writer = training.MetricsWriter(tmp_path)
  writer.write_scalars(3, {'loss': 0.5, 'lr': np.float32(0.25)})
  writer.write_scalars(7, {'loss': jnp.array(0.125)})
  writer.close()
  assert _read_scalars(tmp_path) == {'loss': [(3, 0.5), (7, 0.125)], 'lr': [(3, 0.25)]}


# ---- resumable train loop -------------------------------------------------------------------

_X = np.random.default_rng(1).normal(size=(40, 3)).astype(np.float32)
_Y = _X @ np.array([1.0, -2.0, 0.5], np.float32) + 0.3


def _data_iter():
  ds = (grain.MapDataset.range(len(_X)).shuffle(seed=0).repeat(None)
        .map(lambda i: {'x': _X[i], 'y': _Y[i]}).batch(8))
  return iter(ds.to_iter_dataset())


_TX = training.adamw(learning_rate=0.05, weight_decay=0.1, grad_clip_norm=1.0)


@jax.jit
def _train_step(state, batch):
  def loss_fn(p):
    pred = batch['x'] @ p['w'] + p['b']
    return jnp.mean((pred - batch['y']) ** 2)
  loss, grads = jax.value_and_grad(loss_fn)(state['params'])
  updates, opt_state = _TX.update(grads, state['opt_state'], state['params'])
  return {'params': optax.apply_updates(state['params'], updates), 'opt_state': opt_state,
          'step': state['step'] + 1}, {'loss': loss}


def _run(workdir, num_steps, train_step=_train_step, **kwargs):
  mesh = sharding.make_mesh({'data': -1})
  params = {'w': jnp.zeros((3, 1)).reshape(3), 'b': jnp.zeros(())}
  state = {'params': params, 'opt_state': _TX.init(params), 'step': jnp.zeros((), jnp.int32)}
  state = jax.device_put(state, sharding.replicated(mesh))
  ckpt = TrainCheckpointer(workdir / 'checkpoints', save_interval_steps=3)
  return training.run_train_loop(
      train_step=train_step, state=state, data_iter=_data_iter(), checkpointer=ckpt,
      num_steps=num_steps, log_every=2, workdir=workdir,
      shard_fn=functools.partial(sharding.shard_batch, mesh=mesh), **kwargs)


def _assert_same_state(a, b):
  jax.tree_util.tree_map(lambda x, y: np.testing.assert_allclose(x, y, rtol=0, atol=1e-6), a, b)


@pytest.fixture(scope='module')
def straight_run(tmp_path_factory):
  """An uninterrupted 7-step run with logging and evaluation; the reference for resumes."""
  workdir = tmp_path_factory.mktemp('straight')
  evaluated = []
  state, metrics = _run(workdir, 7,
                        eval_fn=lambda st, s: evaluated.append(s) or {'w0': st['params']['w'][0]},
                        eval_every=3)
  return dict(workdir=workdir, state=state, metrics=metrics, evaluated=evaluated)


def test_loop_logs_evaluates_and_saves(straight_run):
  state, metrics = straight_run['state'], straight_run['metrics']
  assert straight_run['evaluated'] == [3, 6, 7]
  assert int(state['step']) == 7
  ckpt_dir = straight_run['workdir'] / 'checkpoints'
  assert TrainCheckpointer(ckpt_dir, save_interval_steps=3).latest_step() == 7
  scalars = _read_scalars(straight_run['workdir'])
  assert [s for s, _ in scalars['loss']] == [2, 4, 6, 7]  # every log_every steps and the last
  assert set(metrics) == {'loss'} and metrics['loss'] == np.float32(scalars['loss'][-1][1])
  assert [s for s, _ in scalars['eval/w0']] == [3, 6, 7]
  assert 'steps_per_sec' in scalars
  # Params really moved towards the regression solution (from zeros).
  w_true = np.array([1.0, -2.0, 0.5])
  assert np.linalg.norm(state['params']['w'] - w_true) < np.linalg.norm(w_true)


def test_short_run_then_killed_run_then_resume_match_uninterrupted_run(tmp_path, straight_run):
  # 1) A run asked for 4 steps: periodic save at 3 and a forced final save at 4.
  first, _ = _run(tmp_path, 4)
  assert int(first['step']) == 4
  assert TrainCheckpointer(tmp_path / 'checkpoints', save_interval_steps=3).latest_step() == 4

  # 2) Continue to 7 but the job is killed during step 6: step 5 is lost (next save was at 6).
  calls = {'n': 0}

  def dies_in_second_step(state, batch):
    if calls['n'] == 1:
      raise KeyboardInterrupt
    calls['n'] += 1
    return _train_step(state, batch)

  with pytest.raises(KeyboardInterrupt):
    _run(tmp_path, 7, train_step=dies_in_second_step)
  assert TrainCheckpointer(tmp_path / 'checkpoints', save_interval_steps=3).latest_step() == 4

  # 3) Restart: params, optimiser state and data position come back from step 4.
  resumed, metrics = _run(tmp_path, 7)
  assert int(resumed['step']) == 7
  _assert_same_state(resumed, straight_run['state'])
  assert metrics == straight_run['metrics']

  # 4) Nothing left to do: a rerun restores step 7 and returns it unchanged, with no metrics.
  again, again_metrics = _run(tmp_path, 7)
  _assert_same_state(again, straight_run['state'])
  assert again_metrics == {}


def test_loop_argument_errors(tmp_path):
  with pytest.raises(ValueError, match='log_every'):
    training.run_train_loop(train_step=_train_step, state={}, data_iter=iter([]),
                            checkpointer=None, num_steps=1, log_every=0, workdir=tmp_path)
  with pytest.raises(ValueError, match='eval_every'):
    training.run_train_loop(train_step=_train_step, state={}, data_iter=iter([]),
                            checkpointer=None, num_steps=1, log_every=1, workdir=tmp_path,
                            eval_fn=lambda s, i: {})
  with pytest.raises(ValueError, match='cannot be checkpointed'):
    training.run_train_loop(train_step=_train_step, state={}, data_iter=iter([]),
                            checkpointer=TrainCheckpointer(tmp_path, save_interval_steps=1),
                            num_steps=1, log_every=1, workdir=tmp_path)


def test_nonfinite_loss_stops_with_one_line_and_is_never_saved(tmp_path):
  # The loss turns NaN from step 5 on (log_every=2, save every 3): the first log step that
  # sees it (6) stops the run; the last checkpoint is step 3, the last finite save point.
  def diverges(state, batch):
    state, metrics = _train_step(state, batch)
    bad = state['step'] >= 5
    return state, {'loss': jnp.where(bad, jnp.nan, metrics['loss'])}

  with pytest.raises(training.NonFiniteError) as error:
    _run(tmp_path, 10, train_step=diverges, stage_name='world_model')
  message = str(error.value)
  assert '\n' not in message and 'loss' in message and '--config.world_model.lr' in message
  assert 'between steps 4 and 6' in message
  assert TrainCheckpointer(tmp_path / 'checkpoints', save_interval_steps=3).latest_step() == 3


def test_preemption_saves_then_stops(tmp_path, monkeypatch):
  monkeypatch.setattr(training.PreemptionWatch, 'reached', lambda self, step: step == 5)
  info = training.LoopInfo()
  state, _ = _run(tmp_path, 9, info=info)
  assert int(state['step']) == 5 and info.stopped == 'preempted' and info.step == 5
  assert TrainCheckpointer(tmp_path / 'checkpoints', save_interval_steps=3).latest_step() == 5


def test_check_finite_params_names_the_leaf():
  training.check_finite_params({'a': jnp.ones(2)}, 'model')
  with pytest.raises(training.NonFiniteError, match=r'model has non-finite values in 1 arrays '
                                                    r'\(dense/kernel\)'):
    training.check_finite_params({'dense': {'kernel': jnp.array([1.0, jnp.inf])},
                                  'bias': jnp.zeros(2)}, 'model')


def test_cosine_weight_decay_schedule_matches_numpy():
  # wd_t = end + (start - end) (1 + cos(pi t / T)) / 2 on matrices, applied as p -= lr * wd_t p
  # (zero gradients: Adam's update is 0), none on vectors.
  start, end, total, lr = 1e-2, 1e-1, 4, 0.5
  tx = training.adamw(learning_rate=lr, weight_decay=end, weight_decay_start=start,
                      total_steps=total, grad_clip_norm=None)
  params = {'w': jnp.ones((2, 2)), 'b': jnp.ones(2)}
  state = tx.init(params)
  expected = np.ones((2, 2))
  for t in range(6):
    updates, state = tx.update(jax.tree_util.tree_map(jnp.zeros_like, params), state, params)
    params = optax.apply_updates(params, updates)
    wd = end + (start - end) * 0.5 * (1 + np.cos(np.pi * min(t / total, 1.0)))
    expected = expected - lr * wd * expected
    np.testing.assert_allclose(params['w'], expected, rtol=1e-6)
  np.testing.assert_array_equal(params['b'], np.ones(2))
