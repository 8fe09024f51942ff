"""Where each stage of a job lives: the one place that decides the default paths.

A job directory holds one folder per stage (`STAGES`); every binary's `--workdir` is one of
them, and its default inputs are the sibling folders of the same job.
"""

import os

STAGES = ('data', 'pretrain', 'world_model', 'planning')
ENCODER_EXPORT = os.path.join('pretrain', 'encoder')
WORLD_MODEL_EXPORT = os.path.join('world_model', 'model')


def job_dir(stage_workdir: str) -> str:
  """The job directory a stage's `--workdir` belongs to (its parent)."""
  return os.path.dirname(os.path.abspath(stage_workdir))


def sibling(stage_workdir: str, relative: str) -> str:
  """`relative` (e.g. `data`, ENCODER_EXPORT) inside the job of `stage_workdir`."""
  return os.path.join(job_dir(stage_workdir), relative)
