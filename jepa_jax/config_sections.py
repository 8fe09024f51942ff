"""Config sections as frozen dataclasses: building one from the experiment config, nested
sub-sections and overrides of them, and the checks every section shares (positive counts, the
keys of the model dicts a section holds).

Each stage declares its section as a dataclass whose defaults are the paper's values
(`DataConfig`, `PretrainConfig`, `WorldModelConfig`, `LeWMConfig`, `PlanningConfig`); the
experiment config holds them as ConfigDicts (a nested sub-section as a nested ConfigDict).
"""

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

Section = TypeVar('Section')


def _as_dict(section: Any) -> dict:
  """A plain dict of a ConfigDict (recursively, its `to_dict`), a mapping or None."""
  if section is None:
    return {}
  return section.to_dict() if hasattr(section, 'to_dict') else dict(section)


def merge(base: Any, overrides: Any) -> dict:
  """`base` with `overrides` on top, both ConfigDicts or mappings: a nested mapping of
  overrides changes only the keys it names (`dict(cem=dict(num_samples=300))` leaves the other
  keys of `base['cem']` as they are); any other value replaces the base's."""
  merged = _as_dict(base)
  for key, value in _as_dict(overrides).items():
    if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
      merged[key] = merge(merged[key], value)
    else:
      merged[key] = value
  return merged


def from_section(cls: type[Section], section: Any, **overrides) -> Section:
  """`cls` from a ConfigDict, a dict, an instance of `cls` (returned as is without overrides)
  or None (the defaults), with `overrides` merged on top (`merge`: a nested dict overrides only
  the keys it names); an unknown key raises TypeError naming it."""
  if isinstance(section, cls):
    if not overrides:
      return section
    section = dataclasses.asdict(section)
  return cls(**merge(section, overrides))


def sub_section(cls: type, name: str, given: Any, protocol_keys: Iterable[str] = ()) -> dict:
  """The settings of the nested sub-section `name` (e.g. 'planning.cem') of the dataclass `cls`:
  every field of `cls` except `protocol_keys` (those the enclosing section sets), at `cls`'s
  own defaults with `given` (a ConfigDict, a mapping or None) on top, in field order.

  An unknown key of `given` is a one-line ValueError naming `<name>.<key>` and the keys."""
  keys = field_names(cls, exclude=protocol_keys)
  given = _as_dict(given)
  unknown = sorted(set(given) - set(keys))
  if unknown:
    raise ValueError(f'unknown key {name}.{unknown[0]}: {name} has {", ".join(keys)}')
  defaults = cls()
  return {key: given.get(key, getattr(defaults, key)) for key in keys}


def require_positive(config: Any, section_name: str, names: Iterable[str]) -> None:
  """One-line ValueError naming `<section_name>.<name>` for the first of `names` below 1."""
  for name in names:
    if int(getattr(config, name)) < 1:
      raise ValueError(f'{section_name}.{name} must be >= 1, got {getattr(config, name)}')


def check_keys(nested: Any, allowed: Iterable[str], where: str) -> None:
  """One-line ValueError naming `<where>.<key>` and the allowed keys for the first key of the
  nested dict `nested` (a dict, a ConfigDict or None) that is not in `allowed`.

  For the model dicts a section holds (`lewm.encoder`, `pretrain.predictor`,
  `world_model.predictor_config`): a misspelt key fails when the section is read, not when the
  model is built.
  """
  if nested is None:
    return
  keys = nested.to_dict() if hasattr(nested, 'to_dict') else nested
  if not isinstance(keys, Mapping):
    raise ValueError(f'{where} must be a dict of settings, got {nested!r}')
  allowed = tuple(allowed)
  for key in keys:
    if key not in allowed:
      raise ValueError(f'unknown key {where}.{key}; the keys of {where} are '
                       f'{", ".join(sorted(allowed))}')


def field_names(cls: type, exclude: Iterable[str] = ()) -> tuple[str, ...]:
  """The field names of dataclass `cls`, without `exclude`."""
  exclude = set(exclude)
  return tuple(f.name for f in dataclasses.fields(cls) if f.name not in exclude)
