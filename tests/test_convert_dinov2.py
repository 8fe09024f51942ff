"""DINOv2 conversion (torch hub naming) checked against HuggingFace `transformers` DINOv2.

The reference is `transformers`' Dinov2Model / Dinov2WithRegistersModel with a tiny random
config. Their parameter names differ from torch hub's, so the test writes the torch-hub-named
state dict from the HF weights (`_hub_state_dict`, renaming table below) and converts that file.

Position-table interpolation: HF resizes by target size (and the registers model antialiases),
while torch hub (the reference behaviour, docs/reference.md §2) passes `scale_factor = (g + 0.1) / M`
to bicubic `F.interpolate` without antialias. For grids that differ from the table we therefore
replace HF's `interpolate_pos_encoding` by the torch hub rule written here with
`torch.nn.functional.interpolate`, and compare end to end.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')
F = torch.nn.functional

from jepa_jax import checkpoint as checkpoint_lib  # pylint: disable=g-import-not-at-top
from jepa_jax import convert
from jepa_jax.models import vit

WIDTH, HEADS, PATCH, IMAGE = 32, 2, 4, 16  # table grid 4 x 4

# HF name piece -> torch hub name piece (q/k/v are concatenated into attn.qkv separately).
_RENAME = [
    ('embeddings.cls_token', 'cls_token'),
    ('embeddings.mask_token', 'mask_token'),
    ('embeddings.register_tokens', 'register_tokens'),
    ('embeddings.position_embeddings', 'pos_embed'),
    ('embeddings.patch_embeddings.projection.', 'patch_embed.proj.'),
    ('encoder.layer.', 'blocks.'),
    ('.attention.o_proj.', '.attn.proj.'),
    ('.attention.output.dense.', '.attn.proj.'),  # transformers < 5 naming
    ('.layer_scale1.lambda1', '.ls1.gamma'),
    ('.layer_scale2.lambda1', '.ls2.gamma'),
    ('layernorm.', 'norm.'),
]
_QKV = {'q_proj': 0, 'k_proj': 1, 'v_proj': 2, 'query': 0, 'key': 1, 'value': 2}


def _hf_model(registers: bool, seed: int = 0):
  kwargs = dict(hidden_size=WIDTH, num_hidden_layers=2, num_attention_heads=HEADS,
                intermediate_size=4 * WIDTH, patch_size=PATCH, image_size=IMAGE)
  if registers:
    model = transformers.Dinov2WithRegistersModel(
        transformers.Dinov2WithRegistersConfig(num_register_tokens=4, **kwargs))
  else:
    model = transformers.Dinov2Model(transformers.Dinov2Config(**kwargs))
  generator = torch.Generator().manual_seed(seed)
  with torch.no_grad():  # random values everywhere: no zero bias or unit scale hides a bug
    for name, p in model.named_parameters():
      noise = 0.3 * torch.randn(p.shape, generator=generator)
      p.copy_(1.0 + noise if (p.ndim == 1 and 'norm' in name and 'weight' in name) else noise)
  return model.eval()


def _hub_state_dict(model) -> dict:
  """HF DINOv2 weights under torch hub names (docs/reference.md §8)."""
  out, qkv = {}, {}
  for key, value in model.state_dict().items():
    parts = key.split('.')
    if len(parts) >= 4 and parts[-2] in _QKV:  # encoder.layer.i.attention[.attention].q.w
      qkv.setdefault((int(parts[2]), parts[-1]), [None] * 3)[_QKV[parts[-2]]] = value
      continue
    for old, new in _RENAME:
      key = key.replace(old, new)
    out[key] = value.clone()
  for (layer, kind), pieces in qkv.items():
    out[f'blocks.{layer}.attn.qkv.{kind}'] = torch.cat(pieces, dim=0)  # rows [q | k | v]
  return out


def _hub_interpolation(embeddings_module):
  """torch hub DINOv2's position interpolation, replacing HF's size-based one."""
  def interpolate(embeddings, height, width):
    table = embeddings_module.position_embeddings
    dim = table.shape[-1]
    grid = math.isqrt(table.shape[1] - 1)
    rows, cols = height // PATCH, width // PATCH
    if (rows, cols) == (grid, grid):
      return table
    spatial = table[:, 1:].reshape(1, grid, grid, dim).permute(0, 3, 1, 2)
    spatial = F.interpolate(spatial, scale_factor=((rows + 0.1) / grid, (cols + 0.1) / grid),
                            mode='bicubic', antialias=False)
    assert spatial.shape[-2:] == (rows, cols)
    return torch.cat([table[:, :1], spatial.permute(0, 2, 3, 1).reshape(1, -1, dim)], dim=1)
  return interpolate


def _images(size, batch=2, seed=1):
  return np.random.default_rng(seed).normal(size=(batch, size, size, 3)).astype(np.float32)


def _reference_tokens(model, images, registers):
  with torch.no_grad():
    hidden = model(pixel_values=torch.from_numpy(images).permute(0, 3, 1, 2)).last_hidden_state
  return hidden[:, 1 + 4 * registers:].numpy()  # final-LN patch tokens, CLS/registers dropped


def _our_tokens(config, params, images):
  encode = jax.jit(lambda p, x: vit.ViTEncoder(config).apply({'params': p}, x))
  out = encode(params, jnp.asarray(images)[:, None])
  assert out.shape == (images.shape[0], 1) + (images.shape[1] // PATCH,) * 2 + (WIDTH,)
  return np.asarray(out).reshape(images.shape[0], -1, WIDTH)


@pytest.mark.parametrize('registers', [False, True])
def test_parity_with_transformers_at_native_grid(tmp_path, registers):
  model = _hf_model(registers)
  path = str(tmp_path / 'dinov2.pth')
  torch.save(_hub_state_dict(model), path)
  config, params = convert.convert_dinov2(path, num_heads=HEADS)  # 16-wide heads here
  assert (config.width, config.depth, config.num_heads, config.patch_size) == (
      WIDTH, 2, HEADS, PATCH)
  assert config.num_register_tokens == 4 * registers
  assert config.pos_embed_grid == (4, 4) and config.image_size == IMAGE
  images = _images(IMAGE)
  err = np.abs(_our_tokens(config, params, images) - _reference_tokens(model, images, registers))
  assert err.max() <= 1e-4, err.max()


@pytest.mark.parametrize('registers,size', [(False, 24), (True, 24), (False, 8)])
def test_parity_with_interpolated_position_table(registers, size):
  """Working grid 6x6 (upsampled) or 2x2 (downsampled) from a 4x4 table, torch hub rule."""
  model = _hf_model(registers, seed=2)
  model.embeddings.interpolate_pos_encoding = _hub_interpolation(model.embeddings)
  config, params = convert.convert_dinov2(_hub_state_dict(model), num_heads=HEADS,
                                          image_size=size)
  images = _images(size)
  err = np.abs(_our_tokens(config, params, images) - _reference_tokens(model, images, registers))
  assert err.max() <= 1e-4, err.max()


def test_default_heads_use_64_wide_heads():
  state = {k: v.numpy() for k, v in _hub_state_dict(_hf_model(False)).items()}
  state['patch_embed.proj.weight'] = np.zeros((384, 3, 14, 14), np.float32)
  assert convert.dinov2_config_from_state(state).num_heads == 6  # ViT-S/14


def test_prefixed_and_nested_state_dict(tmp_path):
  model = _hf_model(True)
  hub = _hub_state_dict(model)
  path = str(tmp_path / 'wrapped.pth')
  torch.save({'model': {f'module.{k}': v for k, v in hub.items()}}, path)
  _, params = convert.convert_dinov2(path, num_heads=HEADS)
  np.testing.assert_array_equal(params['register_tokens'], hub['register_tokens'].numpy())
  np.testing.assert_array_equal(params['blocks_1']['attn']['qkv']['kernel'],
                                hub['blocks.1.attn.qkv.weight'].numpy().T)


def test_mismatches_are_all_listed():
  hub = _hub_state_dict(_hf_model(False))
  del hub['blocks.1.norm2.bias']
  hub['blocks.0.mlp.w3.weight'] = torch.zeros(4)  # e.g. a SwiGLU (ViT-g) tensor
  hub['blocks.0.attn.proj.weight'] = torch.zeros(WIDTH, WIDTH + 1)
  with pytest.raises(convert.CheckpointMismatchError) as info:
    convert.convert_dinov2(hub, num_heads=HEADS)
  message = str(info.value)
  assert 'missing (1): blocks.1.norm2.bias' in message
  assert 'unexpected (1): blocks.0.mlp.w3.weight' in message
  assert 'mis-shaped (1): blocks.0.attn.proj.weight (32, 33)' in message


def test_not_a_dinov2_checkpoint(tmp_path):
  path = tmp_path / 'notes.pth'
  path.write_text('not a checkpoint')
  with pytest.raises(ValueError, match='not a PyTorch checkpoint'):
    convert.convert_dinov2(str(path))
  with pytest.raises(convert.CheckpointMismatchError, match='missing .*patch_embed.proj.weight'):
    convert.convert_dinov2({'predictor.weight': torch.zeros(2)})


def test_export_round_trip(tmp_path):
  model = _hf_model(True)
  source = str(tmp_path / 'dinov2_reg.pth')
  torch.save(_hub_state_dict(model), source)
  config = convert.convert_checkpoint('dinov2', source, str(tmp_path / 'export'),
                                      num_heads=HEADS)
  kind, stored, params, extra = checkpoint_lib.load_model(str(tmp_path / 'export'))
  assert kind == 'vit' and stored == config and extra['converted_from'] == 'dinov2'
  images = _images(IMAGE)
  ours = _our_tokens(vit.ViTConfig(**stored), params, images)
  err = np.abs(ours - _reference_tokens(model, images, True))
  assert err.max() <= 1e-4, err.max()
