"""Bounded-memory cost evaluation: candidates scored in chunks of a fixed size.

A plan scores N candidate action sequences at once; the predictor's activations for all of
them set the peak memory (paper-size AdaLN predictor: one layer's attention logits take about
13 MB per candidate, 4 GB for 300 candidates). `chunked_cost` evaluates them `chunk_size` at a
time with `lax.map`, so the peak is set by `chunk_size`, not N. Candidates are independent, so
the costs equal those of one batched call (up to the rounding of differently blocked matmuls).

Chunks are also faster on a CPU: scored all at once, the activations of 300 candidates (about
130 MB per layer at 8x8x192) stream through memory between every matmul and elementwise op;
a chunk whose activations stay in the caches runs 1.4-1.5x faster (measured on the planner's
AdaLN unroll: 8x8x192, 300 candidates, 19.6 -> 13.3 s; paper size, 64 candidates, 10.3 ->
7.3 s). `cpu_chunk_size` picks that chunk when the config leaves it open.
"""

import math
from typing import Callable, Sequence

import jax
import jax.numpy as jnp

from jepa_jax.models import cpu_blocking

# Working set of one CPU chunk: a quarter of a 32 MiB L3, a few times a core's L2 (measured:
# 2-16 MiB chunks run within noise of each other, all at once 1.4-1.5x slower).
CPU_CHUNK_BYTES = 8 * 2 ** 20


def cpu_chunk_size(num_candidates: int, latent_shape: Sequence[int]) -> int:
  """Candidates per chunk when none is configured: `num_candidates` (one call) off the CPU
  or when all fit, else the largest divisor of it whose working set fits CPU_CHUNK_BYTES (at
  least 1; a divisor, so no chunk is padded).

  The working set of one candidate is estimated as its predictor's largest activation, the
  MLP hidden layer of a 2-frame window: 2 frames x h*w tokens x (4 x D) channels x 4 bytes
  for a latent of shape `latent_shape` (h, w, D) (MLP ratio 4, float32).
  """
  return cpu_blocking.cpu_cache_block(num_candidates, 2 * 4 * 4 * math.prod(latent_shape),
                                CPU_CHUNK_BYTES)


def chunked_cost(cost_fn: Callable, chunk_size: int | None) -> Callable:
  """Wraps `cost_fn(*args, actions (N, H, A)) -> (N,)` to evaluate `chunk_size` candidates at
  a time (the agent cost `(params, state, goal, actions)` of planning/evaluate.py fits as is).

  Args:
    cost_fn: batched cost whose LAST positional argument is the candidates; row n of the result
      must depend only on row n of the candidates. The other arguments (params, state, goal)
      are passed unchanged to every chunk.
    chunk_size: candidates per chunk; None or >= N = one call (no chunking). When N is not a
      multiple, the last chunk is padded by repeating the last candidate (the padding's costs
      are dropped), so every chunk has the same shape and the graph holds one chunk.
  Returns:
    `(*args, actions (N, H, A)) -> (N,)` with the values of `cost_fn`.
  """
  if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
    raise ValueError(f'chunk_size must be a positive int (candidates per chunk) or None, got '
                     f'{chunk_size!r}')

  def chunked(*args):
    *fixed, actions = args
    n = actions.shape[0]
    if chunk_size is None or chunk_size >= n:
      return cost_fn(*fixed, actions)
    chunks = -(-n // chunk_size)
    pad = chunks * chunk_size - n
    if pad:
      actions = jnp.concatenate([actions, jnp.repeat(actions[-1:], pad, axis=0)])
    per_chunk = actions.reshape((chunks, chunk_size) + actions.shape[1:])
    costs = jax.lax.map(lambda a: cost_fn(*fixed, a), per_chunk)
    return costs.reshape((chunks * chunk_size,) + costs.shape[2:])[:n]

  return chunked
