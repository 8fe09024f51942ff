"""PyTorch baseline of the planning hot path, written from docs/reference.md §3a and §5.

It is what `jepa_jax` is timed against (`jepa_jax.diagnostics.benchmark`): the reference AdaLN
predictor (3D RoPE with the reference's table-layout quirk, AdaLN modulation from the actions,
frame-causal mask, proprio embedding concatenated on channels) and the reference CEM loop
(sample 0 = mean, top-k elites, unbiased std, sliding context window of 2 in the unroll, L2 on
the final predicted latent + 0.1 x proprio). Parameter names follow the reference checkpoints
(docs/reference.md §8), so `state_dict()` converts to our pytree with
`jepa_jax.convert.convert_reference_predictor` and both implementations run the same weights.

Written for speed the way the reference is (`F.scaled_dot_product_attention` with a boolean
mask, all samples in one batch, `torch.inference_mode`); RoPE tables are cached per window
length (the reference recomputes them every call: caching can only make this baseline faster).

torch is an optional dependency: import this module only when torch is installed.

Shapes: N samples, T frames in a window, H x W patch grid, Dv latent channels, E visual width
inside the predictor, Pe proprio embedding channels, C = E + Pe token width, A action channels.
"""

import math
from typing import Callable, Optional

import torch
from torch import nn
from torch.nn import functional as F

PROPRIO_READOUTS = ('per_patch', 'first_patch')


def trunc_normal_(tensor: torch.Tensor, std: float) -> torch.Tensor:
  """Truncated normal with absolute bounds +-2 (docs/reference.md §3a init)."""
  return nn.init.trunc_normal_(tensor, std=std, a=-2.0, b=2.0)


def frame_causal_mask(frames: int, tokens_per_frame: int) -> torch.Tensor:
  """`(T*n, T*n)` bool, True where token i may attend to token j: frame(j) <= frame(i)."""
  frame = torch.arange(frames).repeat_interleave(tokens_per_frame)
  return frame[None, :] <= frame[:, None]


def rope_tables(frames: int, height: int, width: int, head_dim: int):
  """cos/sin tables `(T*H*W, 3*a)` of the reference 3D RoPE, a = 2*((head_dim//3)//2).

  Axis piece p (frame, row, column) covers dims [p*a, (p+1)*a); its element j uses
  theta_{j mod a/2} = pos * 10000^(-(j mod a/2)/(a/2)): the two half tables concatenated
  (the reference's quirk), paired with interleaved rotation partners (see `apply_rope`).
  """
  axis = 2 * ((head_dim // 3) // 2)
  half = axis // 2
  omega = 10000.0 ** (-torch.arange(half, dtype=torch.float64) / half)
  grid = torch.meshgrid(torch.arange(frames), torch.arange(height), torch.arange(width),
                        indexing='ij')
  pieces = []
  for coord in grid:
    theta = coord.reshape(-1, 1).double() * omega[None, :]
    pieces.append(torch.cat([theta, theta], dim=-1))
  theta = torch.cat(pieces, dim=-1).float()
  return torch.cos(theta), torch.sin(theta)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
  """`x * cos + rot(x) * sin` on the first `cos.shape[-1]` dims of `(..., N, head_dim)`;
  rot(x)[2i] = -x[2i+1], rot(x)[2i+1] = x[2i]; the remaining dims pass unrotated."""
  k = cos.shape[-1]
  r = x[..., :k]
  rot = torch.stack([-r[..., 1::2], r[..., 0::2]], dim=-1).flatten(-2)
  return torch.cat([r * cos + rot * sin, x[..., k:]], dim=-1)


class RopeAttention(nn.Module):
  """Multi-head attention; qkv rows [q | k | v], head-major; RoPE on q and k."""

  def __init__(self, dim: int, heads: int):
    super().__init__()
    if dim % heads:
      raise ValueError(f'width {dim} is not divisible by heads={heads}; change heads or width')
    self.heads = heads
    self.qkv = nn.Linear(dim, 3 * dim)
    self.proj = nn.Linear(dim, dim)

  def forward(self, x, mask, cos, sin):
    b, n, dim = x.shape
    q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
    q, k = apply_rope(q, cos.to(q.dtype), sin.to(q.dtype)), apply_rope(k, cos.to(k.dtype),
                                                                      sin.to(k.dtype))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return self.proj(out.transpose(1, 2).reshape(b, n, dim))


class Mlp(nn.Module):

  def __init__(self, dim: int, hidden: int):
    super().__init__()
    self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

  def forward(self, x):
    return self.fc2(F.gelu(self.fc1(x)))  # exact erf GELU


class AdaLNBlock(nn.Module):
  """`x += gate1 * Attn(LN1(x)(1+scale1)+shift1)`; `x += gate2 * MLP(LN2(x)(1+scale2)+shift2)`,
  the six modulations `chunk6(Linear(SiLU(c_t)))` of each frame broadcast to its tokens."""

  def __init__(self, dim: int, heads: int, hidden: int):
    super().__init__()
    self.norm1 = nn.LayerNorm(dim, eps=1e-6)
    self.attn = RopeAttention(dim, heads)
    self.norm2 = nn.LayerNorm(dim, eps=1e-6)
    self.mlp = Mlp(dim, hidden)
    self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

  def forward(self, x, cond, mask, cos, sin):
    """x `(B, T*n, C)`, cond `(B, T, C)`."""
    b, t, c = cond.shape
    mod = self.adaLN_modulation(cond)[:, :, None]  # (B, T, 1, 6C): broadcast per frame
    shift1, scale1, gate1, shift2, scale2, gate2 = mod.chunk(6, dim=-1)
    x = x.reshape(b, t, -1, c)
    h = self.norm1(x) * (1 + scale1) + shift1
    x = x + gate1 * self.attn(h.reshape(b, -1, c), mask, cos, sin).reshape(x.shape)
    x = x + gate2 * self.mlp(self.norm2(x) * (1 + scale2) + shift2)
    return x.reshape(b, -1, c)


class AdaLNPredictor(nn.Module):
  """The reference AdaLN predictor (docs/reference.md §3a), reference init.

  forward(latents (B, T, H, W, Dv), actions (B, T, A), proprio_emb (B, T, Pe) broadcast over
  the patches, or (B, T, H, W, Pe) per patch, or None when proprio_emb_dim = 0)
    -> (visual (B, T, H, W, Dv), proprio (B, T, H, W, Pe) per patch | (B, T, Pe) | None)

  proprio_readout: 'per_patch' (the reference: every patch's proprio channels) or
  'first_patch' (patch (0, 0) of each frame only, for models that read one patch).
  init_std / modulation_std: truncated-normal std of the Linear weights / of the AdaLN
  modulation weights (the reference's 0.02 / 0.2; larger values make untrained weights matter).
  """

  def __init__(self, latent_dim: int, proprio_emb_dim: int, action_dim: int, depth: int,
               heads: int, grid_size=(16, 16), embed_dim: Optional[int] = None,
               mlp_ratio: float = 4.0, init_std: float = 0.02, modulation_std: float = 0.2,
               proprio_readout: str = 'per_patch'):
    super().__init__()
    if proprio_readout not in PROPRIO_READOUTS:
      raise ValueError(f'proprio_readout={proprio_readout!r} must be one of {PROPRIO_READOUTS}')
    embed_dim = embed_dim or latent_dim
    dim = embed_dim + proprio_emb_dim
    self.grid_size, self.embed_dim = tuple(grid_size), embed_dim
    self.proprio_emb_dim, self.proprio_readout = proprio_emb_dim, proprio_readout
    self.head_dim = dim // heads
    self.predictor_embed = nn.Linear(latent_dim, embed_dim)
    self.action_encoder = nn.Linear(action_dim, dim)
    self.predictor_blocks = nn.ModuleList(
        [AdaLNBlock(dim, heads, int(dim * mlp_ratio)) for _ in range(depth)])
    self.predictor_norm = nn.LayerNorm(dim, eps=1e-6)
    self.predictor_proj = nn.Linear(embed_dim, latent_dim)
    self._tables = {}
    self._reference_init(init_std, modulation_std)

  @torch.no_grad()
  def _reference_init(self, init_std: float, modulation_std: float):
    for module in self.modules():
      if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, init_std)
        nn.init.zeros_(module.bias)
      elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
    for layer_id, block in enumerate(self.predictor_blocks, start=1):
      block.attn.proj.weight.div_(math.sqrt(2.0 * layer_id))
      block.mlp.fc2.weight.div_(math.sqrt(2.0 * layer_id))
      trunc_normal_(block.adaLN_modulation[1].weight, modulation_std)

  def _window_tables(self, frames: int, device):
    """(mask, cos, sin) of a `frames`-frame window, built once per length and device."""
    key = (frames, str(device))
    if key not in self._tables:
      h, w = self.grid_size
      cos, sin = rope_tables(frames, h, w, self.head_dim)
      self._tables[key] = (frame_causal_mask(frames, h * w).to(device), cos.to(device),
                           sin.to(device))
    return self._tables[key]

  def forward(self, latents, actions, proprio_emb=None):
    b, t, h, w, _ = latents.shape
    if (h, w) != self.grid_size:
      raise ValueError(f'latents {tuple(latents.shape)} do not match grid_size {self.grid_size}')
    x = self.predictor_embed(latents)
    if self.proprio_emb_dim:
      if proprio_emb is None:
        raise ValueError('this predictor has proprio channels: pass proprio_emb')
      if proprio_emb.dim() == 3:  # (B, T, Pe): the same embedding on every patch
        proprio_emb = proprio_emb[:, :, None, None].expand(b, t, h, w, self.proprio_emb_dim)
      x = torch.cat([x, proprio_emb.to(x.dtype)], dim=-1)
    x = x.reshape(b, t * h * w, x.shape[-1])
    cond = self.action_encoder(actions)
    mask, cos, sin = self._window_tables(t, latents.device)
    for block in self.predictor_blocks:
      x = block(x, cond, mask, cos, sin)
    x = self.predictor_norm(x).reshape(b, t, h, w, -1)
    visual = self.predictor_proj(x[..., :self.embed_dim])
    if not self.proprio_emb_dim:
      return visual, None
    proprio = x[..., self.embed_dim:]
    return visual, (proprio if self.proprio_readout == 'per_patch' else proprio[:, :, 0, 0])


def sliding_window_unroll(predictor: Callable, z0, pe0, actions):
  """docs/reference.md §5 unroll: step 0 feeds (z0, a_0); step h >= 1 feeds the last two latents (true
  or predicted) with (a_{h-1}, a_h) and keeps only the newest prediction.

  z0 (N, H, W, Dv), pe0 (N, Pe) | (N, H, W, Pe) | None, actions (N, Hz, A)
    -> (z (N, Hz, H, W, Dv), pe (N, Hz, ...) | None): predictions of frames 1..Hz.
  """
  zs, pes = [z0], [pe0]
  for step in range(actions.shape[1]):
    lo = max(0, step - 1)
    window_pe = None
    if pe0 is not None:
      window = pes[lo:]
      if any(p.dim() != window[-1].dim() for p in window):  # per-patch next to broadcast
        hw = zs[0].shape[1:3]
        window = [p[:, None, None].expand(-1, *hw, -1) if p.dim() == 2 else p for p in window]
      window_pe = torch.stack(window, dim=1)
    z_out, pe_out = predictor(torch.stack(zs[lo:], dim=1), actions[:, lo:step + 1], window_pe)
    zs.append(z_out[:, -1].to(z0.dtype))
    pes.append(None if pe_out is None else pe_out[:, -1].to(pe0.dtype))
  z = torch.stack(zs[1:], dim=1)
  return z, (None if pe0 is None else torch.stack(pes[1:], dim=1))


def latent_cost(z, pe, goal_z, goal_pe, proprio_weight: float = 0.1):
  """docs/reference.md §5 objective, `(N,)`: mean squared error of the final predicted latent to the
  goal latent `(H, W, Dv)`, plus `proprio_weight` x that of the final proprio prediction to
  the goal embedding `(Pe,)` (broadcast over patches when the prediction is per patch)."""
  cost = (z[:, -1] - goal_z).square().flatten(1).mean(1)
  if pe is not None and proprio_weight > 0:
    cost = cost + proprio_weight * (pe[:, -1] - goal_pe).square().flatten(1).mean(1)
  return cost


def cem_plan(cost_fn: Callable, horizon: int, action_dim: int, num_samples: int,
             num_iters: int, num_elites: int, var_scale: float = 1.0,
             generator: Optional[torch.Generator] = None, device='cpu'):
  """docs/reference.md §5 CEM: mean 0, std `var_scale`; per iteration N Gaussian samples with sample 0
  = the mean, costs `cost_fn(samples (N, Hz, A)) -> (N,)`, the K cheapest refit mean and the
  unbiased std (momentum 0). Returns the final mean `(Hz, A)`."""
  mean = torch.zeros(horizon, action_dim, device=device)
  std = torch.full((horizon, action_dim), float(var_scale), device=device)
  for _ in range(num_iters):
    noise = torch.randn(num_samples, horizon, action_dim, generator=generator, device=device)
    samples = mean + std * noise
    samples[0] = mean
    costs = cost_fn(samples)
    elites = samples[torch.topk(-costs, num_elites).indices]
    mean, std = elites.mean(0), elites.std(0)
  return mean
