r"""Converts a PyTorch checkpoint (DINOv2, reference AdaLN / DINO-WM predictor) to an Orbax export.

  python -m experiments.convert_checkpoint --kind=adaln \
      --input=/ckpts/jepa_wm_wall.pth.tar --output=/tmp/adaln_wall
  python -m experiments.convert_checkpoint --kind=dinov2 \
      --input=dinov2_vits14_reg.pth --output=/tmp/dinov2_s_reg --image_size=224

Needs torch (`pip install 'jepa_jax[torch]'`). The file is read with weights_only=True.
Sizes are inferred from the tensors; what they cannot tell (heads, latent grid) comes from flags.
See jepa_jax/convert/ for the exact rules.

--output must be a new or empty folder, or an earlier conversion; it is replaced only once the
new export is complete. A folder holding other files, or the input itself, is refused.
"""

from absl import flags

from experiments import cli
from jepa_jax import console
from jepa_jax import convert

_KIND = flags.DEFINE_enum('kind', None, list(convert.CONVERT_KINDS), 'Checkpoint kind.')
_INPUT = flags.DEFINE_string('input', None, 'PyTorch .pth / .pth.tar file.')
_OUTPUT = flags.DEFINE_string(
    'output', None, 'Folder of the Orbax export: new, empty, or an earlier conversion.')
_NUM_HEADS = flags.DEFINE_integer(
    'num_heads', None, 'Attention heads (dinov2: default width // 64; adaln: default 16).')
_IMAGE_SIZE = flags.DEFINE_integer(
    'image_size', None, 'dinov2: working resolution (default: the position table native one).')
_HEAD_DIM = flags.DEFINE_integer('head_dim', 64, 'dino_wm: attention head width.')
_GRID = flags.DEFINE_list('grid_size', ['16', '16'], 'adaln/dino_wm: latent patch grid H,W.')
_LATENT_DIM = flags.DEFINE_integer(
    'latent_dim', None, 'dino_wm: expected visual width (checks the channel split).')

flags.mark_flags_as_required(['kind', 'input', 'output'])


def main(argv):
  del argv
  if _KIND.value == 'dinov2':
    options = dict(num_heads=_NUM_HEADS.value, image_size=_IMAGE_SIZE.value)
  else:
    try:
      grid = tuple(int(g) for g in _GRID.value)
    except ValueError:
      raise ValueError(f'--grid_size={",".join(_GRID.value)} must be two integers H,W, '
                       'e.g. --grid_size=16,16') from None
    options = dict(grid_size=grid)
    if _KIND.value == 'adaln':
      options.update(num_heads=_NUM_HEADS.value or 16)
    else:
      options.update(head_dim=_HEAD_DIM.value, latent_dim=_LATENT_DIM.value)
  config = convert.convert_checkpoint(_KIND.value, _INPUT.value, _OUTPUT.value, **options)
  console.result('convert_checkpoint', f'wrote {_OUTPUT.value}: {config}')


if __name__ == '__main__':
  cli.run(main)
