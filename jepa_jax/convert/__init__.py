"""PyTorch checkpoints -> jepa_jax pytrees and Orbax exports.

  convert_dinov2(path_or_state, num_heads=None, image_size=None) -> (ViTConfig, params)
  convert_reference_predictor(path_or_dict, kind, ...) -> (config, params)
  convert_checkpoint(kind, input_path, output_path, **options) -> config  (writes the export)

torch is optional (`pip install 'jepa_jax[torch]'`) and imported only when a file is read;
files are always read with `torch.load(weights_only=True)`. Missing, unexpected or mis-shaped
tensors raise `CheckpointMismatchError` (a ValueError) listing all of them.
"""

import dataclasses
import os
from typing import Any

from jepa_jax import checkpoint as checkpoint_lib
from jepa_jax import outputs
from jepa_jax.convert.dinov2 import convert_dinov2, dinov2_config_from_state
from jepa_jax.convert.reference_predictors import (build_converted,
                                                   convert_reference_predictor)
from jepa_jax.convert.torch_io import CheckpointMismatchError, load_torch_checkpoint

CONVERT_KINDS = ('dinov2', 'adaln', 'dino_wm')
# Output-folder kind of a converted export (outputs.prepare_output_dir marker).
EXPORT_OUTPUT_KIND = 'converted_checkpoint'


def convert_checkpoint(kind: str, input_path: str, output_path: str, **options: Any) -> dict:
  """Converts a PyTorch checkpoint file and writes it with `jepa_jax.checkpoint.save_model`.

  Args:
    kind: 'dinov2' (export kind 'vit', config = ViTConfig fields) or 'adaln' / 'dino_wm'
      (export kind 'predictor', config = {'kind', 'predictor', 'proprio_dim'}, params
      {'predictor', 'proprio_encoder'}).
    input_path: the `.pth` / `.pth.tar` file.
    output_path: directory of the Orbax export: new, empty, or an earlier conversion (replaced
      atomically once the new export is complete). A folder holding other files, or the input,
      is refused (see `jepa_jax.outputs.prepare_output_dir`).
    **options: keyword arguments of `convert_dinov2` / `convert_reference_predictor`.

  Returns:
    The config stored with the export.
  """
  if kind not in CONVERT_KINDS:
    raise ValueError(f'unknown checkpoint kind {kind!r}; choose one of {CONVERT_KINDS}')
  if not os.path.isfile(input_path):
    raise FileNotFoundError(f'no checkpoint file at {input_path!r}; pass the .pth/.pth.tar file '
                            'as --input')
  # Before any work: never write into the input, or over files that are not ours.
  outputs.prepare_output_dir(output_path, kind=EXPORT_OUTPUT_KIND, inputs=[input_path])
  extra = {'source': os.path.abspath(input_path), 'converted_from': kind}
  if kind == 'dinov2':
    vit_config, params = convert_dinov2(input_path, **options)
    # Tuples as lists: the config is returned exactly as `load_model` will give it back.
    config = {k: list(v) if isinstance(v, tuple) else v
              for k, v in dataclasses.asdict(vit_config).items()}
    checkpoint_lib.save_model(output_path, kind='vit', config=config, params=params,
                              extra=extra)
  else:
    config, params = convert_reference_predictor(input_path, kind, **options)
    checkpoint_lib.save_model(output_path, kind='predictor', config=config, params=params,
                              extra=extra)
  return config


__all__ = ['CONVERT_KINDS', 'CheckpointMismatchError', 'build_converted', 'convert_checkpoint',
           'convert_dinov2', 'convert_reference_predictor', 'dinov2_config_from_state',
           'load_torch_checkpoint']
