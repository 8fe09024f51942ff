"""Config differences for config-aware reruns: flattened keys, ignores, selection."""

import ml_collections

from jepa_jax import config_diff


def test_differences_list_changed_added_removed_keys():
  old = {'seed': 0, 'planning': {'num_episodes': 8, 'planner': 'cem'}, 'rules': [['a', [1]]]}
  new = ml_collections.ConfigDict({'seed': 7, 'planning': {'num_episodes': 8, 'planner': 'mppi',
                                                            'horizon': 6},
                                   'rules': [('a', (1,))]})
  assert config_diff.differences(old, new) == [
      'planning.horizon: None -> 6', "planning.planner: 'cem' -> 'mppi'", 'seed: 0 -> 7']
  assert config_diff.differences(old, new, ignore=('planning',)) == ['seed: 0 -> 7']
  assert config_diff.differences(new, new) == []


def test_select_and_flatten():
  config = ml_collections.ConfigDict({'a': {'b': 1, 'c': {}}, 'd': 2})
  assert config_diff.select(config, ('a', 'x')) == {'a': {'b': 1, 'c': {}}, 'x': None}
  assert config_diff.flatten(config) == {'a.b': 1, 'a.c': {}, 'd': 2}
