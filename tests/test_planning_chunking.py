"""chunked_cost (bounded-memory candidate scoring) and the per-patch proprio planning cost,
against float64 numpy re-derivations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jepa_jax.planning import chunking, objectives

N, HORIZON, A, GH, GW, D, PE = 7, 3, 4, 2, 3, 5, 6


def toy_predictions(params, actions):
  """Per-candidate 'unroll': latents (N, H, h, w, D) and per-patch proprio (N, H, h, w, Pe)."""
  z = jnp.tanh(jnp.einsum('nta,ahwd->nthwd', actions, params['z']))
  pe = jnp.cos(jnp.einsum('nta,ahwp->nthwp', actions, params['pe']))
  return z, pe


def np_cost(params, goal_z, goal_pe, actions, alpha, final_only):
  """float64: L2 of the final (or every) step; proprio averaged over patches and channels."""
  p = {k: np.asarray(v, np.float64) for k, v in params.items()}
  costs = []
  for n in range(actions.shape[0]):
    z = np.tanh(np.einsum('ta,ahwd->thwd', actions[n], p['z']))
    pe = np.cos(np.einsum('ta,ahwp->thwp', actions[n], p['pe']))
    steps = [HORIZON - 1] if final_only else range(HORIZON)
    per_step = [np.mean((z[h] - goal_z) ** 2) + alpha * np.mean((pe[h] - goal_pe) ** 2)
                for h in steps]
    costs.append(np.mean(per_step))
  return np.array(costs)


def _setup(seed=0):
  rng = np.random.default_rng(seed)
  params = {'z': rng.normal(size=(A, GH, GW, D)) * 0.5, 'pe': rng.normal(size=(A, GH, GW, PE))}
  params = {k: jnp.asarray(v, jnp.float32) for k, v in params.items()}
  goal_z = rng.normal(size=(GH, GW, D)) * 0.5
  goal_pe = rng.normal(size=(PE,))
  actions = rng.normal(size=(N, HORIZON, A))
  return params, goal_z, goal_pe, actions


@pytest.mark.parametrize('chunk_size', [None, 1, 3, 7, 50])
@pytest.mark.parametrize('final_only', [True, False])
def test_chunked_per_patch_cost_matches_numpy(chunk_size, final_only):
  params, goal_z, goal_pe, actions = _setup()
  config = objectives.ObjectiveConfig(final_step_only=final_only, proprio_weight=0.1)

  def cost_fn(params, goal, actions):  # the agent cost's argument order: actions last
    z, pe = toy_predictions(params, actions)
    return objectives.latent_cost(z, goal['z'], pe, goal['pe'], config)

  goal = {'z': jnp.asarray(goal_z, jnp.float32), 'pe': jnp.asarray(goal_pe, jnp.float32)}
  got = jax.jit(chunking.chunked_cost(cost_fn, chunk_size))(params, goal,
                                                           jnp.asarray(actions, jnp.float32))
  assert got.shape == (N,)
  np.testing.assert_allclose(got, np_cost(params, goal_z, goal_pe, actions, 0.1, final_only),
                             rtol=1e-5, atol=1e-6)


def test_chunks_bound_the_batch_the_cost_sees():
  seen = []

  def cost_fn(actions):
    seen.append(actions.shape[0])
    return jnp.sum(actions ** 2, axis=(1, 2))

  actions = jnp.arange(10 * 2 * 1, dtype=jnp.float32).reshape(10, 2, 1)
  got = jax.jit(chunking.chunked_cost(cost_fn, 4))(actions)
  assert seen == [4]  # traced once, on one chunk of 4 (10 = 3 chunks, the last padded)
  np.testing.assert_allclose(got, np.sum(np.asarray(actions) ** 2, axis=(1, 2)))
  with pytest.raises(ValueError, match='chunk_size'):
    chunking.chunked_cost(cost_fn, 0)


def test_cpu_chunk_size_fits_the_budget_and_divides():
  """The largest divisor of N whose estimated working set (32 bytes per latent element: a
  2-frame window's 4x-wide MLP activations in float32) fits CPU_CHUNK_BYTES; N when all fit."""
  budget = chunking.CPU_CHUNK_BYTES
  per_candidate = 32 * 8 * 8 * 192
  size = chunking.cpu_chunk_size(300, (8, 8, 192))
  assert 300 % size == 0 and size * per_candidate <= budget
  assert all(300 % d or d * per_candidate > budget for d in range(size + 1, 301))
  assert chunking.cpu_chunk_size(300, (1, 1, 64)) == 300       # 600 KB in all: one call
  assert chunking.cpu_chunk_size(7, (64, 64, 1024)) == 1       # one candidate over budget


@pytest.mark.parametrize('budget_candidates,want', [(2, [2]), (None, [6])])
def test_agent_cost_scores_cache_sized_chunks_by_default(monkeypatch, budget_candidates, want):
  # chunk_size=0 (the default) lets the cost pick the chunk from the latent's shape: with a
  # budget of two candidates' working set the unroll sees chunks of 2, else all 6 at once; the
  # costs are the numpy ones either way.
  from jepa_jax.planning import agent  # pylint: disable=g-import-not-at-top
  if budget_candidates:
    monkeypatch.setattr(chunking, 'CPU_CHUNK_BYTES', budget_candidates * 32 * GH * GW * D)
  params, goal_z, goal_pe, actions = _setup()
  actions = actions[:6]
  seen = []

  def unroll(params, z0, pe0, candidates):
    seen.append(candidates.shape[0])
    return toy_predictions(params, candidates)

  config = objectives.ObjectiveConfig(proprio_weight=0.1)
  state = {'z': jnp.zeros((GH, GW, D)), 'pe': jnp.zeros((PE,))}
  goal = {'z': jnp.asarray(goal_z, jnp.float32), 'pe': jnp.asarray(goal_pe, jnp.float32)}
  got = jax.jit(agent.latent_planning_cost(unroll, config))(params, state, goal,
                                                            jnp.asarray(actions, jnp.float32))
  assert seen == want
  np.testing.assert_allclose(got, np_cost(params, goal_z, goal_pe, actions, 0.1, True),
                             rtol=1e-5, atol=1e-6)
