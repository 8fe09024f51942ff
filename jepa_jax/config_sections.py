"""Config sections as frozen dataclasses: building one from the experiment config, and the
checks every section shares (positive counts, the keys of the model dicts a section holds).

Each stage declares its section as a dataclass whose defaults are the paper's values
(`DataConfig`, `PretrainConfig`, `WorldModelConfig`, `LeWMConfig`, `PlanningConfig`); the
experiment config holds them as ConfigDicts.
"""

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

Section = TypeVar('Section')


def from_section(cls: type[Section], section: Any, **overrides) -> Section:
  """`cls` from a ConfigDict, a dict, an instance of `cls` (returned as is without overrides)
  or None (the defaults), with `overrides` on top; an unknown key raises TypeError naming it."""
  if isinstance(section, cls):
    return dataclasses.replace(section, **overrides) if overrides else section
  if section is None:
    section = {}
  if hasattr(section, 'to_dict'):
    section = section.to_dict()
  return cls(**{**dict(section), **overrides})


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
