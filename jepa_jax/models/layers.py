"""Transformer pieces shared by every model: attention (optional 3D RoPE, masks, block-wise
frame-causal attention, cached keys/values of earlier frames), MLP, LayerScale, the pre-LN
block and the AdaLN block, initialisers, and `scan_blocks` (identical blocks as one
`lax.scan`, optional remat).

Parameters are float32; `dtype` is the compute dtype (e.g. `jnp.bfloat16`). Softmax and
LayerNorm statistics are computed in float32.

Parameter trees (names follow the PyTorch references so converters map keys one to one;
Dense kernels are `(in, out)` = torch `weight.T`):

  Attention:  qkv/{kernel (D, 3*inner), bias (3*inner,)}   columns [q | k | v], head-major
              proj/{kernel (inner, D), bias (D,)}
  Mlp:        fc1/{kernel, bias}, fc2/{kernel, bias}
  LayerScale: gamma (D,)
  Block:      norm1/{scale, bias}, attn/..., [ls1/gamma], norm2/..., mlp/..., [ls2/gamma]
  AdaLNBlock: norm1, attn, norm2, mlp, adaLN_modulation/{kernel (C, 6D), bias (6D,)}
              (torch `adaLN_modulation.1`, the Linear after the SiLU)
"""

import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from jepa_jax.models import cpu_blocking
from jepa_jax.models import rope as rope_lib

Dtype = Any


def trunc_normal(std: float, bound: float = 2.0) -> Callable:
  """Truncated normal with standard deviation `std` cut at the ABSOLUTE bounds +-`bound`.

  (torch's `trunc_normal_(std=std, a=-2, b=2)`; jax's initializer takes bounds in units of std.)
  """
  if std == 0:
    return nn.initializers.zeros
  return nn.initializers.truncated_normal(std, lower=-bound / std, upper=bound / std)


def torch_default_uniform(fan_in: int) -> Callable:
  """torch's default nn.Linear / nn.Conv init for weights and biases: U(+-1/sqrt(fan_in))."""
  limit = 1.0 / math.sqrt(fan_in)
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(
      key, shape, dtype, -limit, limit)


def dense(features: int, dtype: Dtype, name: str, *, std: float = 0.02, use_bias: bool = True
          ) -> nn.Dense:
  """Linear layer with the reference init: trunc-normal(std) weights, zero bias."""
  return nn.Dense(features, use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32,
                  kernel_init=trunc_normal(std), bias_init=nn.initializers.zeros, name=name)


def layer_norm(eps: float, dtype: Dtype, name: str) -> nn.LayerNorm:
  """Affine LayerNorm (scale 1, bias 0 at init) over the last axis."""
  return nn.LayerNorm(epsilon=eps, dtype=dtype, param_dtype=jnp.float32, name=name)


def gelu_exact(x: jnp.ndarray) -> jnp.ndarray:
  """GELU with the exact erf form (torch nn.GELU() default)."""
  return nn.gelu(x, approximate=False)


def _attend(q, k, v, mask, dropout):
  """softmax_attend on `(..., N, hd)` arrays, all at once."""
  logits = jnp.einsum('...qd,...kd->...qk', q, k, preferred_element_type=jnp.float32)
  if mask is not None:
    logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
  # max is a constant shift of each row (softmax is invariant to it): no gradient needed.
  logits = logits - jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True))
  weights = jnp.exp(logits)
  total = jnp.sum(weights, axis=-1, keepdims=True)
  if dropout is not None:  # dropout acts on the normalised probabilities
    probs = dropout((weights / total).astype(v.dtype))
    return jnp.einsum('...qk,...kd->...qd', probs, v)
  # The same softmax normalised after the values (as flash attention does): hd divisions per
  # query instead of Nk, and one pass less over the (Nq, Nk) weights (half the attention time
  # on CPU at head_dim 13).
  out = jnp.einsum('...qk,...kd->...qd', weights.astype(v.dtype), v,
                   preferred_element_type=jnp.float32)
  return (out / total).astype(v.dtype)


def softmax_attend(q, k, v, *, mask=None, dropout: Callable | None = None):
  """softmax(q k^T) v with float32 logits and softmax statistics.

  Without mask and dropout, the (batch, head) pairs are attended a cache-sized block at a time
  on a CPU (`cpu_blocking.attention_block_pairs`); the result is the same.

  Args:
    q: `(B, h, Nq, hd)` queries, already scaled by 1/sqrt(hd).
    k, v: `(B, h, Nk, hd)`.
    mask: bool broadcastable to `(B, h, Nq, Nk)`, True = may attend; None = full.
    dropout: applied to the probabilities (None = no dropout).
  Returns:
    `(B, h, Nq, hd)` in v's dtype.
  """
  pairs = q.shape[0] * q.shape[1]
  block = cpu_blocking.attention_block_pairs(pairs, q.shape[2], k.shape[2])
  if mask is not None or dropout is not None or block == pairs:
    return _attend(q, k, v, mask, dropout)
  blocks = lambda t: t.reshape(pairs // block, block, *t.shape[2:])
  out = jax.lax.map(lambda qkv: _attend(*qkv, None, None), (blocks(q), blocks(k), blocks(v)))
  return out.reshape(q.shape)


def frame_causal_attend(q, k, v, num_frames: int, *, prefix=None,
                        dropout: Callable | None = None):
  """Frame-causal attention without a dense mask: the queries of frame t attend the keys of
  frames 0..t (all tokens of a frame see each other), one block per frame, so the masked
  upper triangle of frame blocks is never computed.

  Args:
    q, k, v: `(B, h, T*N, hd)` frame-major (q scaled); num_frames T.
    prefix: None, or `(k, v)` each `(B, h, P, hd)`: keys/values of EARLIER frames of the same
      window (an earlier call's `Attention(return_kv=True)`), attended by every query.
  Returns:
    `(B, h, T*N, hd)`.
  """
  length = q.shape[2]
  if length % num_frames:
    raise ValueError(f'{length} tokens cannot be split into {num_frames} frames')
  n = length // num_frames
  if prefix is not None:
    k, v = jnp.concatenate([prefix[0], k], axis=2), jnp.concatenate([prefix[1], v], axis=2)
  start = 0 if prefix is None else prefix[0].shape[2]
  outs = [softmax_attend(q[:, :, t * n:(t + 1) * n], k[:, :, :start + (t + 1) * n],
                         v[:, :, :start + (t + 1) * n], dropout=dropout)
          for t in range(num_frames)]
  return outs[0] if num_frames == 1 else jnp.concatenate(outs, axis=2)


class Attention(nn.Module):
  """Multi-head self-attention with optional 3D RoPE on q and k.

  Computed head-major `(B, heads, N, head_dim)`; q is scaled by 1/sqrt(head_dim) before the
  logits (RoPE is linear, so this equals scaling the logits).

  Attributes:
    num_heads: number of heads.
    head_dim: per-head width; None -> D // num_heads.
    qkv_bias: bias on the qkv projection.
    rope_layout: RoPE table layout (see rope.py), used when positions are given.
    dropout: dropout on attention probabilities and on the output projection.
    proj_std: init std of `proj` (the reference divides it by sqrt(2 * layer)).
    dtype: compute dtype.
  """
  num_heads: int
  head_dim: int | None = None
  qkv_bias: bool = True
  rope_layout: str = 'reference'
  dropout: float = 0.0
  proj_std: float = 0.02
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, *, mask=None, positions=None, causal_frames: int | None = None,
               kv_prefix=None, return_kv: bool = False, query_frames: int | None = None,
               deterministic: bool = True):
    """Args:
      x: `(B, N, D)` tokens.
      mask: bool broadcastable to `(B, heads, N, N)`, True = may attend; None = full.
      positions: `(N, 3)` or `(B, N, 3)` int RoPE positions (frame, row, col); None = no RoPE.
        A numpy array makes the cos/sin tables trace-time constants.
      causal_frames: T = frame-causal attention over T equal frames (frame-major tokens),
        computed block by block (see `frame_causal_attend`); excludes `mask`.
      kv_prefix: None, or `(k, v)` `(B, heads, P, head_dim)` of earlier frames of the window
        (RoPE applied), attended by every query; needs causal_frames.
      return_kv: also return this call's `(k, v)` `(B, heads, N, head_dim)` (RoPE applied).
      query_frames: Q = only the last Q of the causal_frames frames query (the earlier ones
        are keys/values only, like a kv_prefix): the output is theirs alone, `(B, Q*N/T, D)`.
        Exact: under frame-causal attention no later frame changes an earlier one's output.
      deterministic: disables dropout (dropout needs the 'dropout' rng otherwise).
    Returns:
      `(B, N, D)` (`(B, Q*N/T, D)` with query_frames), and `(k, v)` with return_kv.
    """
    batch, length, width = x.shape
    head_dim = self.head_dim or width // self.num_heads
    if self.head_dim is None and width % self.num_heads:
      raise ValueError(f'width {width} is not divisible by num_heads {self.num_heads}')
    if mask is not None and causal_frames is not None:
      raise ValueError('Attention: give either mask or causal_frames, not both')
    if (kv_prefix is not None or query_frames) and causal_frames is None:
      raise ValueError('Attention: kv_prefix and query_frames need causal_frames '
                       '(frame-causal attention)')
    if query_frames and not 0 < query_frames <= causal_frames:
      raise ValueError(f'Attention: query_frames={query_frames} must be in [1, causal_frames='
                       f'{causal_frames}]')
    inner = self.num_heads * head_dim
    qkv = dense(3 * inner, self.dtype, 'qkv', use_bias=self.qkv_bias)(x)
    qkv = qkv.reshape(batch, length, 3, self.num_heads, head_dim).transpose(2, 0, 3, 1, 4)
    q, k, v = qkv[0] * (1.0 / math.sqrt(head_dim)), qkv[1], qkv[2]  # (B, h, N, hd)
    if positions is not None:
      cos, sin = rope_lib.rope_tables(positions, head_dim, layout=self.rope_layout)
      if cos.ndim == 3:  # per-sample positions (B, N, hd): broadcast over heads
        cos, sin = cos[:, None], sin[:, None]
      q, k = rope_lib.apply_tables(q, cos, sin), rope_lib.apply_tables(k, cos, sin)
    drop = None
    if self.dropout and not deterministic:
      drop = lambda p: nn.Dropout(self.dropout)(p, deterministic=False)
    kv = (k, v)
    if query_frames:  # the earlier frames join the prefix: keys/values only
      keys = (length // causal_frames) * (causal_frames - query_frames)
      earlier = (k[:, :, :keys], v[:, :, :keys])
      kv_prefix = earlier if kv_prefix is None else tuple(
          jnp.concatenate(pair, axis=2) for pair in zip(kv_prefix, earlier))
      q, k, v, causal_frames = q[:, :, keys:], k[:, :, keys:], v[:, :, keys:], query_frames
    if causal_frames is not None:
      out = frame_causal_attend(q, k, v, causal_frames, prefix=kv_prefix, dropout=drop)
    else:
      out = softmax_attend(q, k, v, mask=mask, dropout=drop)
    out = out.transpose(0, 2, 1, 3).reshape(batch, q.shape[2], inner)
    out = dense(width, self.dtype, 'proj', std=self.proj_std)(out)
    out = nn.Dropout(self.dropout)(out, deterministic=deterministic)
    return (out, kv) if return_kv else out


class Mlp(nn.Module):
  """fc1 -> exact GELU -> fc2, dropout after the activation and after fc2."""
  hidden_dim: int
  dropout: float = 0.0
  fc2_std: float = 0.02
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, *, deterministic: bool = True):
    """`(..., D)` -> `(..., D)`."""
    h = gelu_exact(dense(self.hidden_dim, self.dtype, 'fc1')(x))
    h = nn.Dropout(self.dropout)(h, deterministic=deterministic)
    out = dense(x.shape[-1], self.dtype, 'fc2', std=self.fc2_std)(h)
    return nn.Dropout(self.dropout)(out, deterministic=deterministic)


class LayerScale(nn.Module):
  """Per-channel scale `gamma` (DINOv2), initialised to `init_value`."""
  init_value: float

  @nn.compact
  def __call__(self, x):
    gamma = self.param('gamma', nn.initializers.constant(self.init_value), (x.shape[-1],),
                       jnp.float32)
    return x * gamma.astype(x.dtype)


class Block(nn.Module):
  """Pre-LN transformer block: `x += ls1(attn(norm1(x)))`; `x += ls2(mlp(norm2(x)))`.

  Attributes:
    num_heads, head_dim, qkv_bias, rope_layout: see Attention.
    mlp_dim: MLP hidden width.
    layerscale_init: None = no LayerScale; else LayerScale gammas initialised to this value.
    layernorm_eps: LayerNorm epsilon.
    dropout: attention/MLP dropout rate.
    layer_id: 1-based depth; > 0 divides the init std of attn.proj and mlp.fc2 by sqrt(2 l).
  """
  num_heads: int
  mlp_dim: int
  head_dim: int | None = None
  qkv_bias: bool = True
  layerscale_init: float | None = None
  layernorm_eps: float = 1e-6
  rope_layout: str = 'reference'
  dropout: float = 0.0
  layer_id: int = 0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, *, mask=None, positions=None, causal_frames: int | None = None,
               deterministic: bool = True):
    """`(B, N, D)` -> `(B, N, D)`; mask/positions/causal_frames as in Attention."""
    out_std = 0.02 / math.sqrt(2 * self.layer_id) if self.layer_id > 0 else 0.02
    h = Attention(self.num_heads, self.head_dim, self.qkv_bias, self.rope_layout, self.dropout,
                  out_std, self.dtype, name='attn')(
                      layer_norm(self.layernorm_eps, self.dtype, 'norm1')(x), mask=mask,
                      positions=positions, causal_frames=causal_frames,
                      deterministic=deterministic)
    if self.layerscale_init is not None:
      h = LayerScale(self.layerscale_init, name='ls1')(h)
    x = x + h
    h = Mlp(self.mlp_dim, self.dropout, out_std, self.dtype, name='mlp')(
        layer_norm(self.layernorm_eps, self.dtype, 'norm2')(x), deterministic=deterministic)
    if self.layerscale_init is not None:
      h = LayerScale(self.layerscale_init, name='ls2')(h)
    return x + h


class AdaLNBlock(nn.Module):
  """DiT-style block conditioned per frame (docs/reference.md §3a).

  `[shift1, scale1, gate1, shift2, scale2, gate2] = chunk6(adaLN_modulation(SiLU(c)))`,
  `x += gate1 * attn(norm1(x) * (1 + scale1) + shift1)`,
  `x += gate2 * mlp(norm2(x) * (1 + scale2) + shift2)`; modulations broadcast over the tokens
  of their frame.

  Attributes:
    modulation_std: init std of the modulation weights (0.2 for 'AdaLN', 0 for 'AdaLN-zero',
      which makes the block the identity at init).
    other attributes as in Block (no LayerScale, no dropout).
  """
  num_heads: int
  mlp_dim: int
  qkv_bias: bool = True
  layernorm_eps: float = 1e-6
  rope_layout: str = 'reference'
  modulation_std: float = 0.2
  layer_id: int = 0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, cond, *, mask=None, positions=None, causal: bool = False,
               kv_prefix=None, return_kv: bool = False, query_frames: int | None = None):
    """Args:
      x: `(B, T*N, D)` tokens, frame-major (N tokens per frame).
      cond: `(B, T, C)` per-frame condition (the embedded action).
      mask, positions: as in Attention.
      causal: frame-causal attention over the T frames of `cond` (block by block, no mask).
      kv_prefix, return_kv: as in Attention (cached keys/values of earlier frames).
      query_frames: Q = only the last Q frames go on past the attention's keys/values (see
        Attention): the block returns theirs alone, `(B, Q*N, D)`; needs causal.
    Returns:
      `(B, T*N, D)` (`(B, Q*N, D)` with query_frames), and the attention's `(k, v)` with
      return_kv.
    """
    batch, length, width = x.shape
    frames = cond.shape[1]
    if length % frames:
      raise ValueError(f'{length} tokens cannot be split into {frames} frames')
    mod = dense(6 * width, self.dtype, 'adaLN_modulation', std=self.modulation_std)(
        nn.silu(cond))
    mod = mod[:, :, None, :]  # (B, T, 1, 6D): broadcast over the frame's tokens
    shift1, scale1, gate1, shift2, scale2, gate2 = jnp.split(mod, 6, axis=-1)

    def per_frame(fn, t):  # applies fn to (B, T', N, D) and returns (B, T'*N, D)
      return fn(t.reshape(batch, -1, length // frames, width)).reshape(t.shape)

    out_std = 0.02 / math.sqrt(2 * self.layer_id) if self.layer_id > 0 else 0.02
    h = per_frame(lambda t: t * (1 + scale1) + shift1,
                  layer_norm(self.layernorm_eps, self.dtype, 'norm1')(x))
    h = Attention(self.num_heads, None, self.qkv_bias, self.rope_layout, 0.0, out_std,
                  self.dtype, name='attn')(h, mask=mask, positions=positions,
                                           causal_frames=frames if causal else None,
                                           kv_prefix=kv_prefix, return_kv=return_kv,
                                           query_frames=query_frames)
    h, kv = h if return_kv else (h, None)
    if query_frames:  # the rest of the block for the querying frames only
      x = x[:, length - h.shape[1]:]
      gate1, shift2, scale2, gate2 = (m[:, frames - query_frames:]
                                      for m in (gate1, shift2, scale2, gate2))
    x = x + per_frame(lambda t: gate1 * t, h)
    h = per_frame(lambda t: t * (1 + scale2) + shift2,
                  layer_norm(self.layernorm_eps, self.dtype, 'norm2')(x))
    h = Mlp(self.mlp_dim, 0.0, out_std, self.dtype, name='mlp')(h)
    x = x + per_frame(lambda t: gate2 * t, h)
    return (x, kv) if return_kv else x


REMAT_POLICIES = {
    'none': None,  # keep every activation (fastest; planning, small models)
    'full': jax.checkpoint_policies.nothing_saveable,  # recompute the whole block
    'dots': jax.checkpoint_policies.dots_with_no_batch_dims_saveable,  # keep matmul outputs
}


def scan_blocks(parent: nn.Module, block: nn.Module, depth: int, prefix: str, x, *args,
                remat: str = 'none', per_block: dict | None = None,
                last_block: dict | None = None, **kwargs):
  """Applies `depth` copies of `block` in sequence; the compiled graph holds ONE block.

  The parameters keep one subtree per block, `{prefix}{i}` for i < depth (the layout the
  converters and checkpoints use); at apply time they are stacked on a leading layer axis and
  the blocks run as a `lax.scan`, so compile time does not grow with the depth.

  Args:
    parent: the calling module (inside its compact `__call__`).
    block: an UNBOUND block module (`parent=None`); `layer_id` is set to i + 1 for block i
      (it only changes the init).
    depth: number of blocks.
    prefix: parameter-name prefix.
    x: the carried activations; args / kwargs: passed unchanged to every block.
    remat: key of REMAT_POLICIES: 'none', 'full' or 'dots' (gradient checkpointing per block).
    per_block: keyword arguments that differ per block, each a pytree with a leading `depth`
      axis; block i gets slice i.
    last_block: keyword arguments for the last block only (it then runs after the scan of
      the others), e.g. AdaLNBlock's query_frames.
  Returns:
    the output of the last block; when the block returns `(x, extra)`, `(x, extras)` with
    the extras stacked on a leading `depth` axis.
  """
  if remat not in REMAT_POLICIES:
    raise ValueError(f'unknown remat policy {remat!r}; choose one of {tuple(REMAT_POLICIES)}')
  per_block = per_block or {}
  last_block = last_block or {}

  def split(out):  # a block's output -> (carry, extra or None)
    return out if isinstance(out, tuple) else (out, None)

  def stack(trees):  # a list of like pytrees -> one pytree with a leading list axis
    return None if trees[0] is None else jax.tree.map(lambda *t: jnp.stack(t), *trees)

  if parent.is_initializing():  # create the per-block params, one block after the other
    extras = []
    for i in range(depth):
      mine = jax.tree.map(lambda t: t[i], per_block)
      x, extra = split(block.clone(parent=parent, name=f'{prefix}{i}', layer_id=i + 1)(
          x, *args, **kwargs, **mine, **(last_block if i == depth - 1 else {})))
      extras.append(extra)
    extras = stack(extras)
    return x if extras is None else (x, extras)
  params = parent.variables['params']
  scanned = depth - 1 if last_block else depth

  def make_body(block_kwargs):
    def body(carry, xs):
      block_params, mine = xs
      return split(block.apply({'params': block_params}, carry, *args, **kwargs, **mine,
                               **block_kwargs))
    policy = REMAT_POLICIES[remat]
    return body if policy is None else jax.checkpoint(body, policy=policy)

  extras = None
  if scanned:
    stacked = stack([params[f'{prefix}{i}'] for i in range(scanned)])
    x, extras = jax.lax.scan(make_body({}), x,
                             (stacked, jax.tree.map(lambda t: t[:scanned], per_block)))
  if last_block:
    x, extra = make_body(last_block)(
        x, (params[f'{prefix}{depth - 1}'], jax.tree.map(lambda t: t[-1], per_block)))
    if extra is not None:
      extras = stack([extra]) if extras is None else jax.tree.map(
          lambda a, b: jnp.concatenate([a, b[None]]), extras, extra)
  return x if extras is None else (x, extras)
