"""How work is cut into blocks that fit a CPU's caches, and for which platform a trace is made.

On a CPU, arrays that overflow the caches stream through memory between every op; processing a
few items per loop step keeps each step's working set in cache, with the same values. Two CPU
code paths use it: attention over many (batch, head) pairs (`attention_block_pairs`, read by
`layers.softmax_attend`) and the planner's candidate chunks (`planning/chunking.py`, its own
budget). Accelerators fuse or tile these themselves and take them in one piece, so every choice
here returns "all at once" off the CPU, including a TPU program traced on a CPU host
(`compile_target`, used by `jepa_jax.aot`).
"""

import contextlib
import contextvars
from typing import Iterator

import jax

# The platform being traced for, when it is not `jax.default_backend()`: a TPU program compiled
# ahead of time on a CPU host (jepa_jax.aot) is traced on a process whose default backend is
# the CPU, and must not get the CPU's cache-sized blocks (they turn into sequential loops).
_COMPILE_TARGET: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    'jepa_jax_compile_target', default=None)


@contextlib.contextmanager
def compile_target(platform: str) -> Iterator[None]:
  """Functions traced inside are traced for `platform` ('cpu', 'gpu', 'tpu'). Trace a fresh
  function (jit caches traces by function, not by this setting)."""
  token = _COMPILE_TARGET.set(platform)
  try:
    yield
  finally:
    _COMPILE_TARGET.reset(token)


def target_platform() -> str:
  """The platform the current trace is for: `compile_target`'s, else the default backend."""
  return _COMPILE_TARGET.get() or jax.default_backend()


def cpu_cache_block(count: int, item_bytes: int, budget_bytes: int) -> int:
  """How many of `count` like items to process at once so that they fit a CPU cache budget.

  Returns `count` (all at once) off the CPU (`target_platform()`) or when all fit in
  `budget_bytes`, else the largest divisor of `count` whose items fit (at least 1; a divisor, so
  no block is padded).
  """
  if target_platform() != 'cpu' or count * item_bytes <= budget_bytes:
    return count
  block = max(1, budget_bytes // item_bytes)  # < count: the items do not all fit
  while count % block:
    block -= 1
  return block


# On a CPU the (Nq, Nk) logits of every (batch, head) pair at once far overflow the caches
# (537 MB for one paper-size window of 64 samples): XLA writes them to memory and reads them
# back for the max, the exp and the value product. Attending a few pairs per loop step keeps
# each step's logits in cache: 3.5x faster attention at paper size (head dim 24), with the same
# bits. Accelerators fuse or tile attention themselves and take it in one piece.
CPU_LOGITS_BLOCK_BYTES = 4 * 2 ** 20
# Blocks pay only when each pair's logits are large. Measured on the planner's chunked cost:
# paper size (256 x 512 logits per pair, 512 KiB) runs 1.5x faster blocked, while 8x8x192
# (64 x 128, 32 KiB; 10 MB in a chunk of 20) runs 1.3x SLOWER blocked, at every block size
# tried (0.5-4 MiB): its small per-pair matmuls run best as one batched op.
CPU_MIN_BLOCKED_PAIR_BYTES = 128 * 2 ** 10


def attention_block_pairs(pairs: int, num_queries: int, num_keys: int) -> int:
  """How many of `pairs` (batch, head) pairs one loop step of `layers.softmax_attend` attends:
  `cpu_cache_block` of their float32 logits in CPU_LOGITS_BLOCK_BYTES, or `pairs` (one step)
  when one pair's logits are under CPU_MIN_BLOCKED_PAIR_BYTES."""
  per_pair = 4 * num_queries * num_keys
  if per_pair < CPU_MIN_BLOCKED_PAIR_BYTES:
    return pairs
  return cpu_cache_block(pairs, per_pair, CPU_LOGITS_BLOCK_BYTES)
