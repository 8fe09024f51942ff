"""Environments behind one interface (`base.Environment`), found by name: `envs.get('wall')`.

Each environment is one module here that defines `ENV`; it is imported only when asked for, so
an environment's own dependencies (e.g. MuJoCo) load only for the runs that use it.
"""

import importlib

from jepa_jax.envs.base import Environment

_MODULES = {
    'wall': 'jepa_jax.envs.wall',
    'point_maze': 'jepa_jax.envs.point_maze',
    'push_t': 'jepa_jax.envs.push_t',
}
NAMES = tuple(_MODULES)


def get(name: str) -> Environment:
  """The registered environment `name` (one of NAMES)."""
  if name not in _MODULES:
    raise ValueError(f'unknown environment {name!r}; choose one of {NAMES} (config.env)')
  return importlib.import_module(_MODULES[name]).ENV
