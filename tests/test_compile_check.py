"""Ahead-of-time TPU compilation on this CPU host (jepa_jax.aot, experiments.compile_check).

The TPU compiler is libtpu's own (the test extra installs it): every stage's smoke program
compiles for a one-host v5e:2x2 slice with the config's data-parallel mesh, and for a two-host
v5e:2x4 slice with parameters sharded over all 8 chips (FSDP), where each chip then holds
exactly its share of every sharded array. The FLOP count is checked against closed forms and
against XLA's own count, the compiler's out-of-memory verdict against a program that cannot
fit, and the binary's bad topology name against its one-line error.
"""

import math
import os
import re
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

pytest.importorskip('libtpu', reason='the TPU compiler is libtpu\'s: pip install -e ".[test]"')

from experiments.configs import wall  # pylint: disable=g-import-not-at-top
from jepa_jax import aot, sharding, training  # pylint: disable=g-import-not-at-top
from jepa_jax.models import cpu_blocking  # pylint: disable=g-import-not-at-top

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ----------------------------------------------------------------------------- FLOP count


def test_matmul_flops_counts_every_loop_iteration_and_the_backward_pass():
  batch, width, steps = 8, 32, 5

  def scanned(x, w):  # `steps` products (batch, width) @ (width, width)
    return jax.lax.scan(lambda c, _: (jnp.tanh(c @ w), None), x, None, length=steps)[0]

  x, w = jnp.ones((batch, width)), jnp.ones((width, width))
  product = 2 * batch * width * width
  assert aot.matmul_flops(jax.make_jaxpr(scanned)(x, w)) == steps * product
  # Forward, then the gradients of the input and of the weight: 3 products per step.
  loss = lambda x, w: scanned(x, w).sum()
  assert aot.matmul_flops(jax.make_jaxpr(jax.grad(loss, argnums=(0, 1)))(x, w)) == (
      3 * steps * product)

  def branches(flag, x, w):  # the larger branch: two products
    return jax.lax.cond(flag, lambda: x @ w @ w, lambda: x @ w)
  assert aot.matmul_flops(jax.make_jaxpr(branches)(True, x, w)) == 2 * product

  image, kernel = jnp.ones((2, 8, 8, 3)), jnp.ones((3, 3, 3, 16))
  conv = lambda a, b: jax.lax.conv_general_dilated(
      a, b, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  assert aot.matmul_flops(jax.make_jaxpr(conv)(image, kernel)) == 2 * (2 * 8 * 8 * 16) * (3 * 3 * 3)


def test_flops_per_chip_match_xla_on_a_loop_free_sharded_program():
  topo = aot.topology('v5e:2x2')
  mesh = sharding.make_mesh({'data': -1}, devices=topo.devices)
  rows = NamedSharding(mesh, PartitionSpec('data'))
  whole = sharding.replicated(mesh)
  fn = jax.jit(lambda w, x: (x @ w) @ w.T, in_shardings=(whole, rows), out_shardings=rows)
  args = (jax.ShapeDtypeStruct((512, 256), jnp.bfloat16, sharding=whole),
          jax.ShapeDtypeStruct((1024, 512), jnp.bfloat16, sharding=rows))
  report = aot.compile_program(aot.Program('matmul', fn, args, 1, 1, 'steps', ''), topo, mesh)
  with aot.no_persistent_cache():
    xla_flops = fn.trace(*args).lower().compile().cost_analysis()
  xla_flops = (xla_flops[0] if isinstance(xla_flops, list) else xla_flops)['flops']
  assert report.flops == 2 * 2 * 1024 * 512 * 256 / 4 == xla_flops
  assert report.roofline_s == pytest.approx(report.flops / 197e12)  # v5e bf16 peak
  assert report.param_bytes == report.param_bytes_total == 512 * 256 * 2  # replicated weight
  assert report.fits and report.hosts == 1 and report.devices == 4


# ----------------------------------------------------------------------------- topologies


def test_a_program_over_the_chips_hbm_is_refused_with_its_need_and_the_fix():
  topo = aot.topology('v5e:2x2', num_devices=1)  # one chip, 16 GiB
  mesh = sharding.make_mesh({'data': -1}, devices=topo.devices)
  whole = sharding.replicated(mesh)
  fn = jax.jit(lambda x: x @ x.T, in_shardings=whole, out_shardings=whole)
  args = (jax.ShapeDtypeStruct((2 ** 17, 256), jnp.float32, sharding=whole),)  # x x^T: 64 GiB
  program = aot.Program('giant', fn, args, 1, 1, 'steps', 'use more fsdp')
  report = aot.compile_program(program, topo, mesh)
  assert not report.fits
  assert report.total_bytes >= 2 ** 34 * 4 - 1  # at least the (2^17)^2 float32 product
  message = aot.not_fitting_message(report)
  assert '\n' not in message
  assert message.startswith('giant does not fit v5e:2x2')
  assert '16.00 GiB of HBM' in message and message.endswith('; use more fsdp')


def test_layers_block_for_the_cpu_only_when_tracing_for_it():
  pairs, queries, keys = 1024, 256, 512  # 512 KiB of logits per pair: blocked on a CPU
  assert cpu_blocking.attention_block_pairs(pairs, queries, keys) < pairs
  with cpu_blocking.compile_target('tpu'):
    assert cpu_blocking.target_platform() == 'tpu'
    assert cpu_blocking.attention_block_pairs(pairs, queries, keys) == pairs
  assert cpu_blocking.target_platform() == 'cpu'


def test_scanned_vit_blocks_have_the_loops_parameters_and_outputs():
  """`scan_blocks` (the V-JEPA 2 presets: one block in the compiled program) initialises the
  same `blocks_{i}` parameters and computes what the Python loop does, gradients included."""
  import dataclasses  # pylint: disable=g-import-not-at-top
  from jepa_jax.models import vit  # pylint: disable=g-import-not-at-top
  looped = vit.vit_config('small', depth=3, image_size=32, num_frames=4, pos_embed='rope3d')
  scanned = dataclasses.replace(looped, scan_blocks=True)
  video = jax.random.normal(jax.random.PRNGKey(1), (2, 4, 32, 32, 3))
  params = vit.ViTEncoder(looped).init(jax.random.PRNGKey(0), video)
  jax.tree_util.tree_map(np.testing.assert_array_equal, params,
                         vit.ViTEncoder(scanned).init(jax.random.PRNGKey(0), video))
  tokens = jnp.array([[0, 3, 5], [1, 2, 7]])
  for kwargs in ({}, {'token_indices': tokens}):
    np.testing.assert_allclose(vit.ViTEncoder(scanned).apply(params, video, **kwargs),
                               vit.ViTEncoder(looped).apply(params, video, **kwargs),
                               atol=2e-6, rtol=1e-5)
  grads = [jax.grad(lambda p, c=c: vit.ViTEncoder(c).apply(p, video).sum())(params)
           for c in (looped, scanned)]
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4),
                         *grads)


def _fsdp_split_bytes(state, shards: int) -> tuple[float, float]:
  """`(bytes kept whole, bytes split over the shards)` of `state` under the config's rule
  ('.*/kernel' -> first dim over fsdp when it divides), re-derived from the shapes."""
  whole = split = 0.0
  for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
    nbytes = math.prod(leaf.shape) * np.dtype(leaf.dtype).itemsize
    if (re.search('.*/kernel', sharding.path_to_str(path)) and leaf.shape
        and leaf.shape[0] % shards == 0):
      split += nbytes
    else:
      whole += nbytes
  return whole, split


@pytest.mark.parametrize('topology, mesh', [('v5e:2x2', None),  # the config's mesh: data 4
                                            ('v5e:2x4', {'data': 1, 'fsdp': 8})])
def test_smoke_programs_of_every_stage_compile(topology, mesh):
  config = wall.get_config('smoke')
  if mesh:
    config.mesh.update(mesh)
  reports = aot.check(config, topology)
  assert [r.program for r in reports] == list(aot.PROGRAMS)
  chips, hosts = (4, 1) if topology == 'v5e:2x2' else (8, 2)
  for report in reports:
    assert (report.chips, report.hosts, report.fits) == (chips, hosts, True), report
    assert 0 < report.param_bytes <= report.total_bytes < report.hbm_bytes
    assert report.flops > 0 and report.compile_s > 0
  by_name = {r.program: r for r in reports}
  assert by_name['planning'].work == 8  # the smoke config's 8 episodes, one plan each
  for name in ('pretrain', 'world_model', 'lewm'):
    report = by_name[name]
    if not mesh:  # data parallel: every chip holds all of the state
      assert report.param_bytes == report.param_bytes_total
      continue
    program = aot.BUILDERS[name](config, sharding.make_mesh(
        dict(config.mesh), devices=aot.topology(topology).devices), hosts)
    whole, split = np.sum([_fsdp_split_bytes(arg, 8)
                           for arg in program.args[:program.num_param_args]], axis=0)
    assert split > 0.1 * report.param_bytes_total  # the kernels are a real share of the state
    # What the compiled step takes its state in: the kernels' bytes fall by the 8 shards.
    assert report.param_bytes == whole + split / 8


def test_vitg_state_per_chip_is_within_15_percent_of_its_fsdp_share():
  """The paper_vitg variant on v5p:4x4x4 (64 chips): parameters, EMA target and AdamW moments
  of the 1 B-parameter ViT-g and its predictor, sharded by the config's rules (traced only;
  docs/pods.md has the compiled step)."""
  from jepa_jax.pretrain import train as pretrain_train  # pylint: disable=g-import-not-at-top
  config = wall.get_config('paper_vitg')
  mesh = sharding.make_mesh(dict(config.mesh), devices=aot.topology('v5p:4x4x4').devices)
  assert dict(mesh.shape) == {'data': 1, 'fsdp': 64}
  _, _, parts = pretrain_train.stage_parts(config)
  state = training.abstract_state(parts['init_fn'], 0, mesh, training.partition_rules(config))
  total = aot.global_bytes(state)
  encoder = state['params']['encoder']
  assert 1.0e9 < sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(encoder)) < 1.02e9
  per_chip = aot.device_bytes(state, jax.tree_util.tree_map(lambda leaf: leaf.sharding, state))
  assert total / 64 <= per_chip <= 1.15 * total / 64


def test_launcher_check_stops_a_bad_topology_in_one_line(tmp_path):
  """`launch/tpu_pod.sh --check` runs experiments.compile_check on the command's config first;
  its one-line error for a slice libtpu does not know ends the launch before any gcloud call
  (a `gcloud` on PATH would record being called)."""
  gcloud = tmp_path / 'gcloud'
  gcloud.write_text(f'#!/bin/sh\ntouch {tmp_path}/gcloud_called\n')
  gcloud.chmod(0o755)
  done = subprocess.run(
      ['bash', 'launch/tpu_pod.sh', '--check', 'python', '-m', 'experiments.pretrain',
       '--config=experiments/configs/wall.py:smoke', '--config.pretrain.batch_size=8',
       f'--workdir={tmp_path}/pretrain'],
      cwd=REPO, capture_output=True, text=True, timeout=300,
      env={**os.environ, 'JAX_PLATFORMS': 'cpu', 'TOPOLOGY': 'v5e:3x3', 'TPU_NAME': 'pod',
           'ZONE': 'zone', 'PATH': f'{tmp_path}:{os.environ["PATH"]}'})
  assert done.returncode == 1
  lines = done.stderr.strip().splitlines()
  assert len(lines) == 1, done.stderr
  assert "TPU topology 'v5e:3x3'" in lines[0] and 'v5p:4x4x4' in lines[0]
  assert not (tmp_path / 'gcloud_called').exists()
