"""Safe reading of PyTorch checkpoints and strict matching of their tensors to a pytree.

torch is an optional extra (`pip install 'jepa_jax[torch]'`): it is imported only when a
checkpoint is read, never at package import time.

Loading always uses `torch.load(path, weights_only=True, map_location='cpu')`, which refuses to
unpickle anything but tensors and plain containers, so a malicious file cannot run code.

The matching side is torch-free: a converter lists `TensorRule`s (torch key -> path in our
pytree, plus a layout transform), and `assemble_params` applies them to a numpy state dict
against the abstract shapes of our model's parameters. Every problem (missing key, unexpected
key, wrong shape) is collected first and reported in one `CheckpointMismatchError`.
"""

import dataclasses
import os
import pickle
import re
from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np

# A layout transform from a torch tensor (numpy) to our parameter layout.
Transform = Callable[[np.ndarray], np.ndarray]


class CheckpointMismatchError(ValueError):
  """Checkpoint tensors do not match the model; the message lists every missing, unexpected
  and mis-shaped tensor."""


def import_torch():
  """Returns the `torch` module, or raises ImportError saying how to install it."""
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(
        'Reading PyTorch checkpoints needs torch, an optional dependency: '
        "install it with `pip install 'jepa_jax[torch]'` (the CPU build is enough).") from e
  return torch


def load_torch_checkpoint(path: str) -> Any:
  """Reads a `.pth`/`.pth.tar`/`.pt` file with `weights_only=True` on the CPU.

  Args:
    path: file written by `torch.save`.

  Returns:
    The stored object (usually a dict of tensors or a dict of such dicts), tensors on the CPU.

  Raises:
    FileNotFoundError: `path` does not exist.
    ValueError: the file is not a PyTorch checkpoint, or it holds arbitrary Python objects
      that a weights-only load refuses to unpickle.
  """
  torch = import_torch()
  if not os.path.isfile(path):
    raise FileNotFoundError(f'no checkpoint file at {path!r}')
  try:
    return torch.load(path, weights_only=True, map_location='cpu')
  except pickle.UnpicklingError as e:
    found = re.search(r'GLOBAL (\S+)', str(e))
    if found:  # a valid pickle that references a Python class or function
      raise ValueError(
          f'{path!r} holds Python objects other than tensors and plain containers '
          f'({found.group(1)}); refusing to unpickle it (weights_only=True). Re-save only the '
          'state dicts.') from e
    reason = [l.strip() for l in str(e).splitlines() if l.strip().startswith('Unsupported')]
    raise ValueError(f'{path!r} is not a PyTorch checkpoint readable by torch.load '
                     f'(UnpicklingError: {(reason or [str(e)[:80]])[0]})') from e
  except Exception as e:  # torch raises KeyError/EOFError/RuntimeError for non-checkpoints.
    raise ValueError(
        f'{path!r} is not a PyTorch checkpoint readable by torch.load '
        f'({type(e).__name__}: {e})') from e


def tensor_to_numpy(value: Any, key: str) -> np.ndarray:
  """A torch tensor (any float dtype, bf16 included) -> float32 numpy array."""
  torch = import_torch()
  if not isinstance(value, torch.Tensor):
    raise ValueError(f'checkpoint entry {key!r} is a {type(value).__name__}, not a tensor')
  return value.detach().to(device='cpu', dtype=torch.float32).numpy()


def numpy_state_dict(state_dict: Mapping[str, Any], strip_prefix: str = 'module.'
                     ) -> dict[str, np.ndarray]:
  """Torch state dict -> {key: float32 numpy}, dropping a DataParallel/DDP `strip_prefix`.

  The prefix is removed only where every key carries it, so a real submodule called
  `module` is never renamed by accident.
  """
  if not isinstance(state_dict, Mapping):
    raise ValueError(f'expected a state dict (a mapping of names to tensors), got '
                     f'{type(state_dict).__name__}')
  keys = list(state_dict)
  strip = bool(strip_prefix) and bool(keys) and all(k.startswith(strip_prefix) for k in keys)
  return {(k[len(strip_prefix):] if strip else k): tensor_to_numpy(v, k)
          for k, v in state_dict.items()}


@dataclasses.dataclass(frozen=True)
class TensorRule:
  """One torch tensor -> one leaf of our params.

  Attributes:
    torch_key: key in the (prefix-stripped) torch state dict.
    path: path of the leaf in our params pytree, e.g. ('blocks_0', 'attn', 'qkv', 'kernel').
    transform: torch layout -> our layout (e.g. transpose a Linear weight).
  """
  torch_key: str
  path: tuple[str, ...]
  transform: Transform = lambda x: x


def linear_kernel(w: np.ndarray) -> np.ndarray:
  """torch Linear weight (out, in) -> Dense kernel (in, out)."""
  if w.ndim != 2:
    raise ValueError(f'a Linear weight must be 2-D, got shape {w.shape}')
  return w.T


def conv1x_kernel(w: np.ndarray) -> np.ndarray:
  """torch kernel-1 Conv1d weight (out, in, 1) -> Dense kernel (in, out)."""
  if w.ndim != 3 or w.shape[-1] != 1:
    raise ValueError(f'a kernel-1 Conv1d weight must have shape (out, in, 1), got {w.shape}')
  return w[:, :, 0].T


def conv2d_kernel(w: np.ndarray) -> np.ndarray:
  """torch Conv2d weight (out, in, kh, kw) -> flax Conv kernel (kh, kw, in, out)."""
  if w.ndim != 4:
    raise ValueError(f'a Conv2d weight must be 4-D, got shape {w.shape}')
  return w.transpose(2, 3, 1, 0)


def linear_rules(torch_name: str, path: tuple[str, ...], bias: bool = True) -> list[TensorRule]:
  """torch `Linear` `{name}.weight/.bias` -> Dense `path/kernel`, `path/bias`."""
  rules = [TensorRule(f'{torch_name}.weight', path + ('kernel',), linear_kernel)]
  if bias:
    rules.append(TensorRule(f'{torch_name}.bias', path + ('bias',)))
  return rules


def layernorm_rules(torch_name: str, path: tuple[str, ...]) -> list[TensorRule]:
  """torch `LayerNorm` `{name}.weight/.bias` -> flax LayerNorm `path/scale`, `path/bias`."""
  return [TensorRule(f'{torch_name}.weight', path + ('scale',)),
          TensorRule(f'{torch_name}.bias', path + ('bias',))]


def block_rules(torch_prefix: str, path: tuple[str, ...], *, qkv_bias: bool = True
                ) -> list[TensorRule]:
  """timm-style transformer block (`norm1`, `attn.qkv`, `attn.proj`, `norm2`, `mlp.fc1`,
  `mlp.fc2`) -> jepa_jax.models.layers Block/AdaLNBlock params of the same names.

  qkv rows are `[q | k | v]`, head-major, like the columns of our `attn/qkv/kernel`, so a plain
  transpose maps them.
  """
  return (layernorm_rules(f'{torch_prefix}.norm1', path + ('norm1',))
          + linear_rules(f'{torch_prefix}.attn.qkv', path + ('attn', 'qkv'), bias=qkv_bias)
          + linear_rules(f'{torch_prefix}.attn.proj', path + ('attn', 'proj'))
          + layernorm_rules(f'{torch_prefix}.norm2', path + ('norm2',))
          + linear_rules(f'{torch_prefix}.mlp.fc1', path + ('mlp', 'fc1'))
          + linear_rules(f'{torch_prefix}.mlp.fc2', path + ('mlp', 'fc2')))


def count_blocks(state: Mapping[str, Any], prefix: str, what: str) -> int:
  """Number of blocks `{prefix}{i}.*` in a state dict; they must be numbered 0..n-1."""
  indices = set()
  for key in state:
    if key.startswith(prefix):
      head = key[len(prefix):].split('.', 1)[0]
      if head.isdigit():
        indices.add(int(head))
  if not indices:
    raise CheckpointMismatchError(f'{what}: no blocks `{prefix}<i>.*` in the checkpoint')
  if indices != set(range(len(indices))):
    raise CheckpointMismatchError(
        f'{what}: blocks `{prefix}<i>` are not numbered 0..{len(indices) - 1}: '
        f'{sorted(indices)}')
  return len(indices)


def require(state: Mapping[str, np.ndarray], keys: Sequence[str], what: str) -> None:
  """Raises CheckpointMismatchError listing the `keys` absent from `state` (needed to infer
  the model size before the full check)."""
  missing = [k for k in keys if k not in state]
  if missing:
    raise CheckpointMismatchError(
        f'{what}: checkpoint does not match the model:\n  missing ({len(missing)}): '
        + ', '.join(missing))


def _flatten(tree: Any) -> dict[tuple[str, ...], Any]:
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  return {tuple(str(getattr(k, 'key', k)) for k in path): leaf for path, leaf in flat}


def _unflatten(flat: Mapping[tuple[str, ...], Any]) -> dict:
  tree: dict = {}
  for path, leaf in flat.items():
    node = tree
    for name in path[:-1]:
      node = node.setdefault(name, {})
    node[path[-1]] = leaf
  return tree


def assemble_params(state: Mapping[str, np.ndarray], rules: Sequence[TensorRule],
                    abstract_params: Any, *, what: str,
                    ignore: Callable[[str], bool] = lambda key: False) -> dict:
  """Builds our params pytree from a numpy state dict, checking keys and shapes strictly.

  Args:
    state: {torch key: float32 array} (see `numpy_state_dict`).
    rules: one rule per torch tensor that the model uses.
    abstract_params: our params with the target shapes (e.g. from `jax.eval_shape(init)`);
      every leaf must be filled by exactly one rule.
    what: name of the checkpoint part, used in error messages (e.g. 'DINOv2 encoder').
    ignore: keys that are present in the checkpoint but deliberately unused
      (e.g. DINOv2's `mask_token`, only used for masked pretraining).

  Returns:
    Nested dict of float32 numpy arrays with the structure of `abstract_params`.

  Raises:
    CheckpointMismatchError: lists every missing, unexpected and mis-shaped tensor.
  """
  targets = _flatten(abstract_params)
  missing, mis_shaped, out = [], [], {}
  for rule in rules:
    if rule.path not in targets:
      raise AssertionError(f'converter bug: no parameter {"/".join(rule.path)} in the model')
    if rule.torch_key not in state:
      missing.append(rule.torch_key)
      continue
    want = tuple(targets[rule.path].shape)
    try:
      value = np.asarray(rule.transform(state[rule.torch_key]), np.float32)
    except ValueError as e:
      mis_shaped.append(f'{rule.torch_key} {tuple(state[rule.torch_key].shape)} ({e})')
      continue
    if value.shape != want:
      mis_shaped.append(f'{rule.torch_key} {tuple(state[rule.torch_key].shape)} -> '
                        f'{value.shape}, expected {want} for {"/".join(rule.path)}')
      continue
    out[rule.path] = value
  used = {rule.torch_key for rule in rules}
  unexpected = sorted(k for k in state if k not in used and not ignore(k))
  if missing or unexpected or mis_shaped:
    lines = [f'{what}: checkpoint does not match the model:']
    if missing:
      lines.append(f'  missing ({len(missing)}): ' + ', '.join(missing))
    if unexpected:
      lines.append(f'  unexpected ({len(unexpected)}): ' + ', '.join(unexpected))
    if mis_shaped:
      lines.append(f'  mis-shaped ({len(mis_shaped)}): ' + '; '.join(mis_shaped))
    raise CheckpointMismatchError('\n'.join(lines))
  unfilled = sorted('/'.join(p) for p in targets if p not in out)
  if unfilled:
    raise AssertionError(f'converter bug: {what} parameters without a rule: {unfilled}')
  return _unflatten(out)
