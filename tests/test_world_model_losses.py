"""Stage-2 losses against float64 numpy re-derivations with explicit (variable-length) contexts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jepa_jax.world_model import losses

B, H, W, D, A, PE = 2, 2, 3, 4, 3, 5


def stand_in_predictor(w, z, a, pe, rng=None):
  """Frame-causal, window-position-dependent stand-in: output i mixes frames 0..i of the call."""
  t = z.shape[1]
  pos = jnp.arange(1, t + 1, dtype=jnp.float32)
  weights = jnp.tril(jnp.ones((t, t))) * pos[None, :] / pos[:, None]  # [i, j] = (j+1)/(i+1), j<=i
  a_term = jnp.mean(a, -1)
  z_next = w * jnp.einsum('ij,bjhwd->bihwd', weights, z) + a_term[:, :, None, None, None]
  pe_next = None if pe is None else w * jnp.einsum('ij,bjp->bip', weights, pe) + a_term[..., None]
  return z_next, pe_next


def np_predictor(w, z, a, pe):
  """The same stand-in, written as explicit float64 loops (independent of the jnp version)."""
  t = z.shape[1]
  z_out = np.zeros_like(z)
  pe_out = np.zeros_like(pe)
  for i in range(t):
    for j in range(i + 1):
      z_out[:, i] += w * (j + 1) / (i + 1) * z[:, j]
      pe_out[:, i] += w * (j + 1) / (i + 1) * pe[:, j]
    z_out[:, i] += a[:, i].mean(-1)[:, None, None, None]
    pe_out[:, i] += a[:, i].mean(-1)[:, None]
  return z_out, pe_out


def np_distance(pred, target, l2=1.0, l1=0.0, cos=0.0):
  d = pred - target
  c = (pred * target).sum(-1) / (np.linalg.norm(pred, axis=-1) * np.linalg.norm(target, axis=-1))
  return l2 * np.mean(d ** 2) + l1 * np.mean(np.abs(d)) + cos * np.mean(1 - c)


def make_batch(num_frames, seed=0):
  rng = np.random.default_rng(seed)
  z = rng.normal(size=(B, num_frames, H, W, D))
  a = rng.normal(size=(B, num_frames, A))
  pe = rng.normal(size=(B, num_frames, PE))
  return z, a, pe


def np_rollout(w, z, a, pe, t, context=3):
  """Reference 2roll: explicit context list [z_0..z_t, zhat_{t+1}], last `context` frames."""
  tf_z, tf_pe = np_predictor(w, z, a, pe)
  ctx_z = np.concatenate([z[:, :t + 1], tf_z[:, t:t + 1]], 1)[:, -context:]
  ctx_pe = np.concatenate([pe[:, :t + 1], tf_pe[:, t:t + 1]], 1)[:, -context:]
  first = t + 2 - ctx_z.shape[1]
  ctx_a = a[:, first:t + 2]
  out_z, out_pe = np_predictor(w, ctx_z, ctx_a, ctx_pe)
  return out_z[:, -1], out_pe[:, -1]


def test_latent_distance_mix_matches_numpy():
  rng = np.random.default_rng(1)
  p, q = rng.normal(size=(3, 4, 6)), rng.normal(size=(3, 4, 6))
  cfg = losses.LossConfig(l2_weight=0.7, l1_weight=0.2, cosine_weight=0.5)
  got = losses.latent_distance(jnp.asarray(p, jnp.float32), jnp.asarray(q, jnp.float32), cfg)
  np.testing.assert_allclose(got, np_distance(p, q, 0.7, 0.2, 0.5), rtol=1e-5)


def test_teacher_forcing_loss_matches_numpy():
  z, a, pe = make_batch(4)
  w = 0.8
  cfg = losses.LossConfig()
  f32 = lambda x: jnp.asarray(x, jnp.float32)
  vis, prop, _ = losses.teacher_forcing_loss(
      lambda *x: stand_in_predictor(w, *x), f32(z), f32(a), f32(pe), cfg)
  ref_z, ref_pe = np_predictor(w, z, a, pe)
  np.testing.assert_allclose(vis, np_distance(ref_z[:, :-1], z[:, 1:]), rtol=1e-5)
  np.testing.assert_allclose(prop, np_distance(ref_pe[:, :-1], pe[:, 1:]), rtol=1e-5)


@pytest.mark.parametrize('num_frames', [4, 6])
def test_rollout_loss_every_prefix_matches_explicit_context(num_frames):
  z, a, pe = make_batch(num_frames, seed=num_frames)
  w = 0.9
  cfg = losses.LossConfig()
  f32 = lambda x: jnp.asarray(x, jnp.float32)

  @jax.jit
  def jax_rollout(t):
    predict = lambda *x: stand_in_predictor(w, *x)
    _, _, (pz, ppe) = losses.teacher_forcing_loss(predict, f32(z), f32(a), f32(pe), cfg)
    return losses.rollout_loss(predict, f32(z), f32(a), f32(pe), pz, ppe, t, cfg)

  for t in range(num_frames - 2):
    ref_z, ref_pe = np_rollout(w, z, a, pe, t)
    vis, prop = jax_rollout(jnp.int32(t))
    np.testing.assert_allclose(vis, np_distance(ref_z, z[:, t + 2]), rtol=1e-5, err_msg=f't={t}')
    np.testing.assert_allclose(prop, np_distance(ref_pe, pe[:, t + 2]), rtol=1e-5)


def test_rollout_gradient_stops_at_inputs():
  """d L_roll / d w only flows through the second pass: the context is a constant."""
  z, a, pe = make_batch(5, seed=3)
  cfg = losses.LossConfig()
  f32 = lambda x: jnp.asarray(x, jnp.float32)
  t = 2

  def ours(w):
    predict = lambda *x: stand_in_predictor(w, *x)
    _, _, (pz, ppe) = losses.teacher_forcing_loss(predict, f32(z), f32(a), f32(pe), cfg)
    vis, prop = losses.rollout_loss(predict, f32(z), f32(a), f32(pe), pz, ppe, jnp.int32(t), cfg)
    return vis + prop

  # Reference: the context is built outside the differentiated function (numpy constants).
  w0 = 0.7
  tf_z, tf_pe = np_predictor(w0, z, a, pe)
  ctx_z = f32(np.concatenate([z[:, :t + 1], tf_z[:, t:t + 1]], 1)[:, -3:])
  ctx_pe = f32(np.concatenate([pe[:, :t + 1], tf_pe[:, t:t + 1]], 1)[:, -3:])

  def reference(w):
    oz, ope = stand_in_predictor(w, ctx_z, f32(a[:, t - 1:t + 2]), ctx_pe)
    return jnp.mean((oz[:, -1] - z[:, t + 2]) ** 2) + jnp.mean((ope[:, -1] - pe[:, t + 2]) ** 2)

  np.testing.assert_allclose(jax.grad(ours)(w0), jax.grad(reference)(w0), rtol=1e-4)


def test_world_model_loss_combines_tf_and_rollout():
  z, a, pe = make_batch(4, seed=5)
  w = 1.1
  cfg = losses.LossConfig(proprio_weight=0.5)
  f32 = lambda x: jnp.asarray(x, jnp.float32)
  loss, metrics = losses.world_model_loss(
      lambda *x: stand_in_predictor(w, *x), f32(z), f32(a), f32(pe), jax.random.key(0), cfg)
  t = int(metrics['rollout_prefix'])
  assert 0 <= t <= 1
  tf_z, tf_pe = np_predictor(w, z, a, pe)
  l_tf = np_distance(tf_z[:, :-1], z[:, 1:]) + 0.5 * np_distance(tf_pe[:, :-1], pe[:, 1:])
  rz, rpe = np_rollout(w, z, a, pe, t)
  l_roll = np_distance(rz, z[:, t + 2]) + 0.5 * np_distance(rpe, pe[:, t + 2])
  np.testing.assert_allclose(loss, l_tf / 3 + l_roll / 2, rtol=1e-5)


def test_teacher_forcing_only_and_no_proprio():
  z, a, _ = make_batch(3, seed=7)
  cfg = losses.LossConfig(rollout_steps=1)
  f32 = lambda x: jnp.asarray(x, jnp.float32)
  loss, metrics = losses.world_model_loss(
      lambda *x: stand_in_predictor(1.0, *x), f32(z), f32(a), None, jax.random.key(0), cfg)
  tf_z, _ = np_predictor(1.0, z, a, np.zeros((B, 3, 1)))
  np.testing.assert_allclose(loss, np_distance(tf_z[:, :-1], z[:, 1:]), rtol=1e-5)
  assert float(metrics['tf_proprio']) == 0.0


def per_patch_predictor(w, z, a, pe, rng=None):
  """Stand-in with per-patch proprio output (B, T, h, w, Pe) that depends on the patch; accepts
  per-frame (B, T, Pe) or per-patch proprio input."""
  z_next, _ = stand_in_predictor(w, z, a, None)
  if pe.ndim == 3:
    pe = jnp.broadcast_to(pe[:, :, None, None], z.shape[:4] + pe.shape[-1:])
  t = z.shape[1]
  pos = jnp.arange(1, t + 1, dtype=jnp.float32)
  weights = jnp.tril(jnp.ones((t, t))) * pos[None, :] / pos[:, None]
  return z_next, w * jnp.einsum('ij,bjhwp->bihwp', weights, pe) + 0.1 * z_next[..., :1]


def np_per_patch_predictor(w, z, a, pe):
  """float64 loops of per_patch_predictor; pe (B, T, Pe) or (B, T, h, w, Pe)."""
  if pe.ndim == 3:
    pe = np.broadcast_to(pe[:, :, None, None], z.shape[:4] + pe.shape[-1:])
  z_out, _ = np_predictor(w, z, a, np.zeros(z.shape[:2] + (1,)))
  pe_out = np.zeros_like(pe)
  for i in range(z.shape[1]):
    for j in range(i + 1):
      pe_out[:, i] += w * (j + 1) / (i + 1) * pe[:, j]
  return z_out, pe_out + 0.1 * z_out[..., :1]


@pytest.mark.parametrize('t', [0, 1])
def test_per_patch_proprio_is_supervised_on_every_patch(t):
  """Teacher forcing and 2roll with per-patch proprio predictions: every patch is compared
  with the frame's embedding, and the rollout context feeds the per-patch prediction back
  (true frames repeated over the patches)."""
  z, a, pe = make_batch(4, seed=5)
  config = losses.LossConfig(rollout_context=3)
  predict = lambda *x: per_patch_predictor(0.8, *x)
  f32 = lambda x: jnp.asarray(x, jnp.float32)
  tf_v, tf_p, (pred_z, pred_pe) = losses.teacher_forcing_loss(predict, f32(z), f32(a), f32(pe),
                                                              config)
  want_z, want_pe = np_per_patch_predictor(0.8, z[:, :-1], a[:, :-1], pe[:, :-1])
  target = np.broadcast_to(pe[:, 1:, None, None], want_pe.shape)
  np.testing.assert_allclose(tf_p, np.mean((want_pe - target) ** 2), rtol=1e-5)
  np.testing.assert_allclose(tf_v, np.mean((want_z - z[:, 1:]) ** 2), rtol=1e-5)
  roll_v, roll_p = losses.rollout_loss(predict, f32(z), f32(a), f32(pe), pred_z, pred_pe,
                                       jnp.int32(t), config)
  # explicit context: true frames 0..t (repeated over patches) + predicted frame t + 1
  pe_all = np.broadcast_to(pe[:, :, None, None], z.shape[:4] + pe.shape[-1:])
  ctx_z = np.concatenate([z[:, :t + 1], want_z[:, t:t + 1]], 1)[:, -3:]
  ctx_pe = np.concatenate([pe_all[:, :t + 1], want_pe[:, t:t + 1]], 1)[:, -3:]
  first = t + 2 - ctx_z.shape[1]
  out_z, out_pe = np_per_patch_predictor(0.8, ctx_z, a[:, first:t + 2], ctx_pe)
  np.testing.assert_allclose(roll_v, np.mean((out_z[:, -1] - z[:, t + 2]) ** 2), rtol=1e-5)
  np.testing.assert_allclose(roll_p, np.mean((out_pe[:, -1] - pe_all[:, t + 2]) ** 2),
                             rtol=1e-5)


def test_bad_config_is_rejected():
  with pytest.raises(ValueError, match='rollout_steps'):
    losses.LossConfig(rollout_steps=3)
