"""The binaries on bad inputs: each ends with exit status 1 and one line naming the thing and the
fix, and destroys nothing. Every case is a real subprocess; they run concurrently (each pays the
JAX import) so the table stays fast.

A row: (name, binary, arguments (with {tmp} for the case's folder), expected text of the line).
`_setup` prepares the case's folder; `_after` checks what must have survived.
"""

import concurrent.futures
import os
import subprocess
import sys

import numpy as np
import pytest

from jepa_jax import checkpoint, outputs

pytestmark = [pytest.mark.slow,  # a subprocess per case, each importing JAX
              pytest.mark.xdist_group('bad_inputs')]  # one worker runs the shared fixture

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONVERT = 'experiments.convert_checkpoint'
PLAN = 'experiments.plan'
PIPELINE = 'experiments.run_pipeline'
SMOKE = '--config=experiments/configs/wall.py:smoke'
_ADALN = ['--kind=adaln', '--num_heads=2', '--grid_size=3,4']

CASES = [
    ('convert_output_is_the_input', CONVERT,
     _ADALN + ['--input={tmp}/in.pth', '--output={tmp}/in.pth'],
     'is the input'),
    ('convert_output_contains_the_input', CONVERT,
     _ADALN + ['--input={tmp}/in.pth', '--output={tmp}'],
     'contains the input'),
    ('convert_output_holds_user_files', CONVERT,
     _ADALN + ['--input={tmp}/in.pth', '--output={tmp}/user'],
     'already holds files not written by jepa_jax'),
    ('convert_output_is_a_file', CONVERT,
     _ADALN + ['--input={tmp}/in.pth', '--output={tmp}/user/notes.txt'],
     'is a file, not a folder'),
    ('convert_output_cannot_be_created', CONVERT,
     _ADALN + ['--input={tmp}/in.pth', '--output=/proc/jepa_jax_output'],
     'cannot be created or written'),
    ('convert_input_missing', CONVERT,
     _ADALN + ['--input={tmp}/absent.pth', '--output={tmp}/out'],
     'no checkpoint file at'),
    ('convert_garbage_input_over_an_earlier_conversion', CONVERT,
     _ADALN + ['--input={tmp}/in.pth', '--output={tmp}/earlier'],
     'is not a PyTorch checkpoint readable by torch.load'),
    ('convert_positional_argument', CONVERT,
     _ADALN + ['--input={tmp}/in.pth', '--output={tmp}/out', 'num_heads=4'],
     "unexpected arguments ['num_heads=4']"),
    ('convert_bad_grid', CONVERT,
     ['--kind=adaln', '--grid_size=3,x', '--input={tmp}/in.pth', '--output={tmp}/out'],
     '--grid_size=3,x must be two integers H,W'),
    ('unknown_config_key', PLAN, [SMOKE, '--config.foo.bar=1', '--workdir={tmp}/planning'],
     'unknown config key'),
    ('plan_positional_argument', PLAN, [SMOKE, '--workdir={tmp}/planning', 'num_steps=40'],
     "unexpected arguments ['num_steps=40']"),
    ('plan_onto_a_file', PLAN, [SMOKE, '--oracle', '--workdir={tmp}/user/notes.txt'],
     'is a file, not a folder'),
    ('plan_into_a_user_folder', PLAN, [SMOKE, '--oracle', '--workdir={tmp}/user'],
     'already holds files not written by jepa_jax'),
    ('plan_without_a_world_model', PLAN, [SMOKE, '--workdir={tmp}/job/planning'],
     'no exported world model'),
    ('plan_unknown_row', PLAN, [SMOKE, '--oracle', '--extra_rows=mcp', '--workdir={tmp}/rows'],
     "unknown planning rows ['mcp']"),
    ('plan_unknown_oracle_cost', PLAN,
     [SMOKE, '--oracle', '--config.planning.oracle_cost=reward', '--workdir={tmp}/cost'],
     "oracle_cost='reward' must be one of"),
    ('plan_latent_oracle_without_a_world_model', PLAN,
     [SMOKE, '--oracle', '--config.planning.oracle_cost=latent', '--workdir={tmp}/job/oracle'],
     'no exported world model'),
    # Settings of a later stage are checked before the first stage starts.
    ('pipeline_bad_planner_budget', PIPELINE,
     ['--config=experiments/configs/wall.py:paper_vjepa', '--config.planning.cem.num_samples=8',
      '--workdir={tmp}/job'], 'planning.cem: num_elites=10 must be in [2, num_samples=8]'),
    ('pipeline_zero_steps', PIPELINE,
     [SMOKE, '--config.world_model.num_steps=0', '--workdir={tmp}/job'],
     'world_model.num_steps must be >= 1'),
    ('pipeline_paper_without_encoder', PIPELINE,
     ['--config=experiments/configs/wall.py:paper', '--workdir={tmp}/job'],
     '--config.encoder_export=DIR'),
    ('pipeline_unknown_ablation_protocol', PIPELINE,
     [SMOKE, '--config.ablation_protocol=mcp', '--ablation', '--workdir={tmp}/job'],
     "ablation_protocol='mcp' must be 'main' or a row of planning_extra"),
    ('pipeline_label_curve_duplicate', PIPELINE,
     [SMOKE, '--label_curve=1,0.5,1', '--workdir={tmp}/job'],
     '--label_curve lists fraction 1 twice'),
    ('pipeline_label_curve_with_seeds', PIPELINE,
     [SMOKE, '--label_curve=1,0.5', '--seeds=2', '--workdir={tmp}/job'],
     '--label_curve runs one seed without the ablation'),
    ('pretrain_end_to_end_objective', 'experiments.pretrain',
     [SMOKE, '--config.method=three_stage', '--config.pretrain.objective=lewm',
      '--workdir={tmp}/job/pretrain'], 'not a stage-1 objective'),
    # Each binary trains one method's stage; the other method's config is refused in one line.
    ('pretrain_under_lewm', 'experiments.pretrain',
     [SMOKE, '--config.method=lewm', '--workdir={tmp}/job/pretrain'],
     "experiments.pretrain trains the 'three_stage' method but this config has method='lewm'"),
    ('train_wm_under_lewm', 'experiments.train_wm',
     [SMOKE, '--config.method=lewm', '--workdir={tmp}/job/world_model'],
     'run python -m experiments.train_lewm'),
    ('train_lewm_under_three_stage', 'experiments.train_lewm',
     [SMOKE, '--config.method=three_stage', '--workdir={tmp}/job/lewm'],
     '--config.method=lewm'),
    # LeWM has no frozen latent before it trains: its pseudo labels read proprio (none here).
    ('lewm_pseudo_labels_without_proprio', PIPELINE,
     [SMOKE, '--config.method=lewm', '--config.labeled_fraction=0.5',
      '--config.lewm.pseudo_labels=True', '--workdir={tmp}/job'],
     'lewm.pseudo_labels needs proprio (lewm.proprio_emb_dim > 0)'),
    ('random_init_over_a_trained_encoder', 'experiments.pretrain',
     [SMOKE, '--config.method=three_stage', '--random_init', '--workdir={tmp}/trained/pretrain'],
     'give --random_init a new --workdir'),
    ('unknown_method', PIPELINE, [SMOKE, '--config.method=vjepa', '--workdir={tmp}/job'],
     "method='vjepa' is not a method"),
]

_EARLIER = {'w': np.arange(3, dtype=np.float32)}


def _setup(tmp):
  os.makedirs(os.path.join(tmp, 'user'))
  with open(os.path.join(tmp, 'user', 'notes.txt'), 'w') as f:
    f.write('precious')
  with open(os.path.join(tmp, 'in.pth'), 'wb') as f:
    f.write(b'not a checkpoint, but the only copy of something')
  earlier = os.path.join(tmp, 'earlier')  # what a finished conversion leaves
  outputs.prepare_output_dir(earlier, kind='converted_checkpoint')
  checkpoint.save_model(earlier, kind='predictor', config={}, params=_EARLIER)
  trained = os.path.join(tmp, 'trained', 'pretrain')  # a finished stage 1
  outputs.prepare_output_dir(trained, kind='pretrain')
  checkpoint.save_model(os.path.join(trained, 'encoder'), kind='vit', config={}, params=_EARLIER)


def _after(tmp):
  with open(os.path.join(tmp, 'in.pth'), 'rb') as f:
    assert f.read() == b'not a checkpoint, but the only copy of something'
  assert os.listdir(os.path.join(tmp, 'user')) == ['notes.txt']
  with open(os.path.join(tmp, 'user', 'notes.txt')) as f:
    assert f.read() == 'precious'
  for folder in ('earlier', 'trained/pretrain/encoder'):
    np.testing.assert_array_equal(checkpoint.load_model(os.path.join(tmp, folder))[2]['w'],
                                  _EARLIER['w'])


def _run(case, tmp):
  _, binary, args, _ = case
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu'}
  return subprocess.run([sys.executable, '-m', binary] + [a.format(tmp=tmp) for a in args],
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope='module')
def results(tmp_path_factory):
  folders = {case[0]: str(tmp_path_factory.mktemp(case[0])) for case in CASES}
  for folder in folders.values():
    _setup(folder)  # here, not in the threads: orbax saves are not thread-safe
  with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
    futures = {case[0]: pool.submit(_run, case, folders[case[0]]) for case in CASES}
    return {name: (future.result(), folders[name]) for name, future in futures.items()}


@pytest.mark.parametrize('case', CASES, ids=[case[0] for case in CASES])
def test_one_line_error_and_nothing_lost(case, results):
  done, tmp = results[case[0]]
  lines = done.stderr.strip().splitlines()
  assert done.returncode == 1, done.stderr
  assert len(lines) == 1, done.stderr
  assert lines[0].startswith('error: ') and case[3] in lines[0], lines[0]
  assert done.stdout == ''
  _after(tmp)


def test_help_lists_variants_and_keys_and_exits_0():
  done = subprocess.run([sys.executable, '-m', PLAN, '--help'], cwd=REPO, capture_output=True,
                        text=True, timeout=300, env={**os.environ, 'JAX_PLATFORMS': 'cpu'})
  assert done.returncode == 0, done.stderr
  assert 'Variants: smoke, tiny, paper, paper_vjepa' in done.stdout
  assert 'point_maze.py' in done.stdout and 'planning.cem.num_samples' in done.stdout
