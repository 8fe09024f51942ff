"""Bounded-memory cost evaluation: candidates scored in chunks of a fixed size.

A plan scores N candidate action sequences at once; the predictor's activations for all of
them set the peak memory (paper-size AdaLN predictor: one layer's attention logits take about
13 MB per candidate, 4 GB for 300 candidates). `chunked_cost` evaluates them `chunk_size` at a
time with `lax.map`, so the peak is set by `chunk_size`, not N. Candidates are independent, so
the costs equal those of one batched call (up to the rounding of differently blocked matmuls).
"""

from typing import Callable

import jax
import jax.numpy as jnp


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
