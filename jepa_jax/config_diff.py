"""Which settings differ between two configs: for config-aware reruns and resumes."""

from typing import Any, Iterable, Mapping


def _plain(value: Any) -> Any:
  value = value.to_dict() if hasattr(value, 'to_dict') else value
  if isinstance(value, Mapping):
    return {str(k): _plain(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_plain(v) for v in value]
  return value


def flatten(config: Any, prefix: str = '') -> dict:
  """`{'a.b.c': leaf}` of a nested config (ConfigDict, dict); lists are leaves."""
  config = _plain(config)
  if not isinstance(config, dict):
    return {prefix: config}
  flat = {}
  for key, value in config.items():
    name = f'{prefix}.{key}' if prefix else key
    flat.update(flatten(value, name) if isinstance(value, dict) and value else {name: value})
  return flat


def select(config: Any, keys: Iterable[str]) -> dict:
  """The top-level entries `keys` of `config` (missing ones as None), as plain data."""
  config = _plain(config)
  return {key: config.get(key) for key in keys}


def differences(old: Any, new: Any, ignore: Iterable[str] = ()) -> list[str]:
  """`['key: old -> new', ...]` for every flattened key whose value differs, except keys equal
  to or below an entry of `ignore`."""
  old_flat, new_flat = flatten(old), flatten(new)
  ignore = tuple(ignore)

  def ignored(key):
    return any(key == i or key.startswith(i + '.') for i in ignore)

  changed = []
  for key in sorted(set(old_flat) | set(new_flat)):
    a, b = old_flat.get(key), new_flat.get(key)
    if a != b and not ignored(key):
      changed.append(f'{key}: {a!r} -> {b!r}')
  return changed
