"""Run provenance recorded in results.json / summary.json: versions, machine, devices."""

import json
import os

import jax
import numpy as np

from jepa_jax import provenance


def test_describe_run_is_json_and_names_this_machine():
  info = provenance.describe_run()
  json.dumps(info)  # plain JSON
  assert info['packages']['jax'] == jax.__version__
  assert info['packages']['numpy'] == np.__version__
  assert info['cpu_count'] == os.cpu_count()
  assert info['jax']['backend'] == jax.default_backend()
  assert len(info['jax']['devices']) == jax.device_count()


def test_cpu_info_reads_model_and_isa(tmp_path):
  cpuinfo = tmp_path / 'cpuinfo'
  cpuinfo.write_text('processor\t: 0\nmodel name\t: Test CPU 9000\n'
                     'flags\t\t: fpu sse4_2 avx2 fma avx512f\n\nprocessor\t: 1\n')
  info = provenance.cpu_info(str(cpuinfo))
  assert info['model'] == 'Test CPU 9000'
  assert {'avx2', 'fma', 'avx512f'} <= set(info['isa'])
