"""Reference predictor conversion (AdaLN / DINO-WM `.pth.tar`) against PyTorch re-implementations.

The torch modules are written from docs/reference.md §3a / §3b and §8 (key names),
independently of our JAX models: the AdaLN predictor is `jepa_jax.diagnostics.torch_reference`'s
(the one the benchmark times), the DINO-WM predictor and the kernel-1 Conv1d encoders are
written below. Each test saves one in the reference `.pth.tar` layout (predictor, opt, scaler,
epoch, encoders; optionally with a `module.` prefix), converts it, and compares forward passes
in float32.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip('torch')
nn = torch.nn

from jepa_jax import checkpoint as checkpoint_lib  # pylint: disable=g-import-not-at-top
from jepa_jax import convert
from jepa_jax.diagnostics import torch_reference

# ----------------------------------------------------------------- torch references (§3, §8)


class Conv1dEncoder(nn.Module):
  """Reference proprio / DINO-WM action encoder: kernel-1 Conv1d over time."""

  def __init__(self, in_dim, emb_dim):
    super().__init__()
    self.patch_embed = nn.Conv1d(in_dim, emb_dim, kernel_size=1)

  def forward(self, x):  # (B, T, P) -> (B, T, E)
    return self.patch_embed(x.transpose(1, 2)).transpose(1, 2)


class DinoWMAttention(nn.Module):

  def __init__(self, dim, heads, dim_head):
    super().__init__()
    self.heads, self.dim_head = heads, dim_head
    self.norm = nn.LayerNorm(dim)  # eps 1e-5
    self.to_qkv = nn.Linear(dim, 3 * heads * dim_head, bias=False)
    self.to_out = nn.Sequential(nn.Linear(heads * dim_head, dim), nn.Dropout(0.0))

  def forward(self, x, mask):
    b, n, _ = x.shape
    q, k, v = [u.reshape(b, n, self.heads, self.dim_head).transpose(1, 2)
               for u in self.to_qkv(self.norm(x)).chunk(3, dim=-1)]
    attn = (q @ k.transpose(-1, -2) * self.dim_head ** -0.5).masked_fill(~mask, float('-inf'))
    return self.to_out((attn.softmax(-1) @ v).transpose(1, 2).reshape(b, n, -1))


class DinoWMFeedForward(nn.Module):

  def __init__(self, dim, hidden):
    super().__init__()
    self.net = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.GELU(),
                             nn.Dropout(0.0), nn.Linear(hidden, dim), nn.Dropout(0.0))

  def forward(self, x):
    return self.net(x)


class DinoWMTransformer(nn.Module):

  def __init__(self, dim, depth, heads, dim_head, mlp_dim):
    super().__init__()
    self.layers = nn.ModuleList([nn.ModuleList([DinoWMAttention(dim, heads, dim_head),
                                                DinoWMFeedForward(dim, mlp_dim)])
                                 for _ in range(depth)])
    self.norm = nn.LayerNorm(dim)

  def forward(self, x, mask):
    for attn, ff in self.layers:
      x = attn(x, mask) + x
      x = ff(x) + x
    return self.norm(x)


class TorchDinoWMPredictor(nn.Module):
  """§3b: tokens (frames * patches, dim) + learned positions through causal pre-LN blocks."""

  def __init__(self, num_patches, num_frames, dim, depth, heads, dim_head, mlp_dim):
    super().__init__()
    self.pos_embedding = nn.Parameter(torch.randn(1, num_frames * num_patches, dim))
    self.transformer = DinoWMTransformer(dim, depth, heads, dim_head, mlp_dim)

  def forward(self, x, tokens_per_frame):  # x: (B, N, dim)
    n = x.shape[1]
    x = x + self.pos_embedding[:, :n]
    return self.transformer(x, torch_reference.frame_causal_mask(n // tokens_per_frame,
                                                                 tokens_per_frame))


def dino_wm_forward(predictor, action_encoder, proprio_encoder, latents, actions, proprio):
  """DINO-WM world model step: per patch [z | proprio emb | action emb], split the output."""
  b, t, h, w, dv = latents.shape
  pe, ae = proprio_encoder(proprio), action_encoder(actions)
  tile = lambda e: e[:, :, None, None].expand(b, t, h, w, e.shape[-1])
  x = torch.cat([latents, tile(pe), tile(ae)], dim=-1).reshape(b, t * h * w, -1)
  out = predictor(x, h * w).reshape(b, t, h, w, -1)
  return out[..., :dv], out[:, :, 0, 0, dv:dv + pe.shape[-1]]


def randomize_(module, seed):
  """N(0, 0.3^2) everywhere (LayerNorm weights around 1): no symmetric init hides a mapping bug."""
  generator = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in module.named_parameters():
      noise = 0.3 * torch.randn(p.shape, generator=generator)
      p.copy_(1.0 + noise if ('norm' in name or 'net.0' in name) and p.ndim == 1
              and name.endswith('weight') else noise)
  return module.eval()


def reference_file(path, modules, *, prefix=''):
  """Saves `{name: module}` like the reference trainer: state dicts + opt/scaler/epoch."""
  params = [p for m in modules.values() for p in m.parameters()]
  opt = torch.optim.AdamW(params, lr=1e-3)
  sum(p.sum() for p in params).backward()
  opt.step()  # a real optimizer state (tensors, ints, floats, lists)
  ckpt = {name: {prefix + k: v for k, v in m.state_dict().items()} for name, m in modules.items()}
  ckpt.update(opt=opt.state_dict(), scaler=None, epoch=7)
  torch.save(ckpt, path)
  return path


# ------------------------------------------------------------------------------------ tests

B, T, GRID = 2, 3, (3, 4)  # non-square grid catches row/column mix-ups
ADALN = dict(latent_dim=24, proprio_emb_dim=6, action_dim=4, depth=2, heads=2)  # head dim 15
PROPRIO_DIM = 3


def _inputs(visual_dim, action_dim, seed=0):
  rng = np.random.default_rng(seed)
  shape = (B, T) + GRID
  return (rng.normal(size=shape + (visual_dim,)).astype(np.float32),
          rng.normal(size=(B, T, action_dim)).astype(np.float32),
          rng.normal(size=(B, T, PROPRIO_DIM)).astype(np.float32))


def _torch_adaln(seed=0):
  predictor = randomize_(torch_reference.AdaLNPredictor(**ADALN, grid_size=GRID), seed)
  proprio = randomize_(Conv1dEncoder(PROPRIO_DIM, ADALN['proprio_emb_dim']), seed + 1)
  return predictor, proprio


def _our_forward(config, params, latents, actions, proprio):
  predictor, proprio_encoder = convert.build_converted(config)

  @jax.jit
  def forward(params, latents, actions, proprio):
    emb = proprio_encoder.apply({'params': params['proprio_encoder']}, proprio)
    return predictor.apply({'params': params['predictor']}, latents, actions, emb)

  visual, proprio_pred = forward(params, *map(jnp.asarray, (latents, actions, proprio)))
  return np.asarray(visual), np.asarray(proprio_pred)


@pytest.mark.parametrize('prefix', ['', 'module.'])
def test_adaln_parity(tmp_path, prefix):
  predictor, proprio = _torch_adaln()
  path = reference_file(str(tmp_path / 'adaln.pth.tar'),
                        {'predictor': predictor, 'proprio_encoder': proprio}, prefix=prefix)
  config, params = convert.convert_reference_predictor(path, 'adaln', num_heads=ADALN['heads'],
                                                       grid_size=GRID)
  cfg = config['predictor']
  assert (cfg['latent_dim'], cfg['proprio_emb_dim'], cfg['action_dim'], cfg['depth']) == (
      24, 6, 4, 2)
  assert config['proprio_dim'] == PROPRIO_DIM and cfg['embed_dim'] is None
  latents, actions, raw_proprio = _inputs(24, 4)
  with torch.no_grad():
    want_visual, want_proprio = predictor(
        torch.from_numpy(latents), torch.from_numpy(actions),
        proprio(torch.from_numpy(raw_proprio)))
  visual, proprio_pred = _our_forward(config, params, latents, actions, raw_proprio)
  assert np.abs(visual - want_visual.numpy()).max() <= 1e-4
  assert np.abs(proprio_pred - want_proprio.numpy()).max() <= 1e-4


DINO_WM = dict(visual_dim=12, proprio_emb_dim=4, action_emb_dim=3, action_dim=5, depth=2,
               heads=2, dim_head=8, mlp_dim=32, max_frames=3)


def _torch_dino_wm(seed=0):
  d = DINO_WM
  width = d['visual_dim'] + d['proprio_emb_dim'] + d['action_emb_dim']
  predictor = randomize_(TorchDinoWMPredictor(
      GRID[0] * GRID[1], d['max_frames'], width, d['depth'], d['heads'], d['dim_head'],
      d['mlp_dim']), seed)
  actions = randomize_(Conv1dEncoder(d['action_dim'], d['action_emb_dim']), seed + 1)
  proprio = randomize_(Conv1dEncoder(PROPRIO_DIM, d['proprio_emb_dim']), seed + 2)
  return predictor, actions, proprio


@pytest.mark.parametrize('frames', [T, 2])  # full position table, and a prefix of it
def test_dino_wm_parity(tmp_path, frames):
  predictor, action_encoder, proprio = _torch_dino_wm()
  path = reference_file(str(tmp_path / 'dino_wm.pth.tar'), {
      'predictor': predictor, 'action_encoder': action_encoder, 'proprio_encoder': proprio},
                        prefix='module.')
  config, params = convert.convert_reference_predictor(path, 'dino_wm', head_dim=8,
                                                       grid_size=GRID, latent_dim=12)
  cfg = config['predictor']
  assert (cfg['num_heads'], cfg['mlp_dim'], cfg['max_frames'], cfg['action_dim']) == (
      2, 32, 3, 5)
  latents, actions, raw_proprio = (a[:, :frames] for a in _inputs(12, 5, seed=1))
  with torch.no_grad():
    want_visual, want_proprio = dino_wm_forward(
        predictor, action_encoder, proprio, *map(torch.from_numpy,
                                                 (latents, actions, raw_proprio)))
  visual, proprio_pred = _our_forward(config, params, latents, actions, raw_proprio)
  assert np.abs(visual - want_visual.numpy()).max() <= 1e-4
  assert np.abs(proprio_pred - want_proprio.numpy()).max() <= 1e-4


def _adaln_checkpoint():
  predictor, proprio = _torch_adaln()
  return {'predictor': dict(predictor.state_dict()),
          'proprio_encoder': dict(proprio.state_dict()), 'epoch': 1}


def test_adaln_mismatches_are_all_listed():
  ckpt = _adaln_checkpoint()
  del ckpt['predictor']['predictor_blocks.1.norm1.bias']
  ckpt['predictor']['predictor_blocks.0.attn.q_norm.weight'] = torch.zeros(15)
  ckpt['predictor']['predictor_proj.bias'] = torch.zeros(25)
  with pytest.raises(convert.CheckpointMismatchError) as info:
    convert.convert_reference_predictor(ckpt, 'adaln', num_heads=2, grid_size=GRID)
  message = str(info.value)
  assert 'missing (1): predictor_blocks.1.norm1.bias' in message
  assert 'unexpected (1): predictor_blocks.0.attn.q_norm.weight' in message
  assert 'mis-shaped (1): predictor_proj.bias (25,) -> (25,), expected (24,)' in message


def test_missing_and_unexpected_encoders():
  ckpt = _adaln_checkpoint()
  del ckpt['proprio_encoder']  # the predictor has 6 proprio channels: the encoder is needed
  with pytest.raises(convert.CheckpointMismatchError, match='missing .*patch_embed.weight'):
    convert.convert_reference_predictor(ckpt, 'adaln', num_heads=2, grid_size=GRID)
  ckpt = _adaln_checkpoint()
  ckpt['action_encoder'] = {'patch_embed.weight': torch.zeros(30, 4, 1)}
  with pytest.raises(convert.CheckpointMismatchError, match='unexpected .*patch_embed.weight'):
    convert.convert_reference_predictor(ckpt, 'adaln', num_heads=2, grid_size=GRID)


def test_not_a_predictor_checkpoint(tmp_path):
  plain = str(tmp_path / 'state_dict.pth')
  torch.save({'blocks.0.norm1.weight': torch.zeros(2)}, plain)
  with pytest.raises(ValueError, match="not a reference predictor checkpoint.*'predictor'"):
    convert.convert_reference_predictor(plain, 'adaln')
  text = tmp_path / 'README.pth.tar'
  text.write_text('hello')
  with pytest.raises(ValueError, match='not a PyTorch checkpoint'):
    convert.convert_reference_predictor(str(text), 'adaln')
  with pytest.raises(ValueError, match="unknown reference predictor kind 'vjepa'"):
    convert.convert_reference_predictor(_adaln_checkpoint(), 'vjepa')
  with pytest.raises(ValueError, match='num_heads=7 does not divide the width 30'):
    convert.convert_reference_predictor(_adaln_checkpoint(), 'adaln', num_heads=7)


def test_binary_writes_a_loadable_export(tmp_path, parsed_flags):
  from experiments import convert_checkpoint as binary  # pylint: disable=g-import-not-at-top
  predictor, proprio = _torch_adaln(seed=3)
  source = reference_file(str(tmp_path / 'adaln.pth.tar'),
                          {'predictor': predictor, 'proprio_encoder': proprio})
  out = str(tmp_path / 'export')
  parsed_flags(kind='adaln', input=source, output=out, num_heads='2', grid_size='3,4')
  binary.main(['convert_checkpoint'])
  kind, config, params, extra = checkpoint_lib.load_model(out)
  assert kind == 'predictor' and config['kind'] == 'adaln' and extra['converted_from'] == 'adaln'
  assert sorted(params) == ['predictor', 'proprio_encoder']
  latents, actions, raw_proprio = _inputs(24, 4, seed=2)
  with torch.no_grad():
    want_visual, _ = predictor(torch.from_numpy(latents), torch.from_numpy(actions),
                               proprio(torch.from_numpy(raw_proprio)))
  visual, _ = _our_forward(config, params, latents, actions, raw_proprio)
  assert np.abs(visual - want_visual.numpy()).max() <= 1e-4
