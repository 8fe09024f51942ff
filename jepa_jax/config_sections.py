"""Config sections as frozen dataclasses: building one from the experiment config, and the
check every section shares.

Each stage declares its section as a dataclass whose defaults are the paper's values
(`DataConfig`, `PretrainConfig`, `WorldModelConfig`, `LeWMConfig`, `PlanningConfig`); the
experiment config holds them as ConfigDicts.
"""

import dataclasses
from collections.abc import Iterable
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
