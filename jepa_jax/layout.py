"""Where each stage of a job lives: the one place that decides the default paths.

A job directory holds one folder per stage of its method (`stages(method)`); every binary's
`--workdir` is one of them, and its default inputs are the sibling folders of the same job.

  three_stage   data/ -> pretrain/ (encoder/) -> world_model/ (model/) -> planning/
  lewm          data/ -> lewm/ (model/) -> planning/
"""

import os

_STAGES = {'three_stage': ('data', 'pretrain', 'world_model', 'planning'),
           'lewm': ('data', 'lewm', 'planning')}
METHODS = tuple(_STAGES)
ENCODER_EXPORT = os.path.join('pretrain', 'encoder')


def check_method(method: str) -> str:
  """`method` itself, or one line naming the choices."""
  if method not in METHODS:
    raise ValueError(f'method={method!r} is not a method; choose one of {METHODS} '
                     '(--config.method=...)')
  return method


def stages(method: str) -> tuple[str, ...]:
  """The stage folders of a job of `method`, in the order they run."""
  return _STAGES[check_method(method)]


def model_stage(method: str) -> str:
  """The stage that exports the world model stage 3 plans with."""
  return 'lewm' if check_method(method) == 'lewm' else 'world_model'


def world_model_export(method: str) -> str:
  """The exported world model of a `method` job, relative to the job directory."""
  return os.path.join(model_stage(method), 'model')


def job_dir(stage_workdir: str) -> str:
  """The job directory a stage's `--workdir` belongs to (its parent)."""
  return os.path.dirname(os.path.abspath(stage_workdir))


def sibling(stage_workdir: str, relative: str) -> str:
  """`relative` (e.g. `data`, ENCODER_EXPORT) inside the job of `stage_workdir`."""
  return os.path.join(job_dir(stage_workdir), relative)
