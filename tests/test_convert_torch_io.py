"""Safe PyTorch checkpoint reading and strict key/shape matching (jepa_jax.convert.torch_io)."""

import collections
import sys

import jax
import numpy as np
import pytest

torch = pytest.importorskip('torch')

from jepa_jax.convert import torch_io  # pylint: disable=g-import-not-at-top


class _NotATensor:
  """A class the weights-only unpickler must refuse."""


def test_reads_state_dict_on_cpu_as_float32(tmp_path):
  path = str(tmp_path / 'ok.pth')
  torch.save(collections.OrderedDict(
      w=torch.arange(6, dtype=torch.bfloat16).reshape(2, 3), b=torch.ones(2)), path)
  state = torch_io.numpy_state_dict(torch_io.load_torch_checkpoint(path))
  assert state['w'].dtype == np.float32
  np.testing.assert_array_equal(state['w'], np.arange(6).reshape(2, 3))
  np.testing.assert_array_equal(state['b'], np.ones(2))


def test_missing_file(tmp_path):
  with pytest.raises(FileNotFoundError, match='no checkpoint file'):
    torch_io.load_torch_checkpoint(str(tmp_path / 'absent.pth'))


@pytest.mark.parametrize('content', [b'hello, I am a text file\n', b''])
def test_not_a_checkpoint(tmp_path, content):
  path = tmp_path / 'bad.pth'
  path.write_bytes(content)
  with pytest.raises(ValueError, match='not a PyTorch checkpoint'):
    torch_io.load_torch_checkpoint(str(path))


def test_refuses_arbitrary_objects(tmp_path):
  path = str(tmp_path / 'pickled.pth')
  torch.save({'predictor': _NotATensor()}, path)
  with pytest.raises(ValueError, match='refusing to unpickle'):
    torch_io.load_torch_checkpoint(path)


def test_missing_torch_gives_install_hint(monkeypatch):
  monkeypatch.setitem(sys.modules, 'torch', None)  # makes `import torch` raise ImportError
  with pytest.raises(ImportError, match=r"jepa_jax\[torch\]"):
    torch_io.import_torch()


def test_module_prefix_stripped_only_when_on_every_key():
  ddp = torch_io.numpy_state_dict({'module.a.weight': torch.zeros(1), 'module.b': torch.zeros(1)})
  assert sorted(ddp) == ['a.weight', 'b']
  mixed = torch_io.numpy_state_dict({'module.a': torch.zeros(1), 'b': torch.zeros(1)})
  assert sorted(mixed) == ['b', 'module.a']


def test_non_tensor_entry_is_named():
  with pytest.raises(ValueError, match="'epoch' is a int"):
    torch_io.numpy_state_dict({'w': torch.zeros(1), 'epoch': 3})


def _abstract():
  return {'dense': {'kernel': jax.ShapeDtypeStruct((3, 2), np.float32),
                    'bias': jax.ShapeDtypeStruct((2,), np.float32)},
          'scale': jax.ShapeDtypeStruct((2,), np.float32)}


_RULES = [torch_io.TensorRule('fc.weight', ('dense', 'kernel'), torch_io.linear_kernel),
          torch_io.TensorRule('fc.bias', ('dense', 'bias')),
          torch_io.TensorRule('gamma', ('scale',))]


def test_assemble_transposes_linear_weights():
  weight = np.arange(6, dtype=np.float32).reshape(2, 3)  # torch (out, in)
  params = torch_io.assemble_params(
      {'fc.weight': weight, 'fc.bias': np.ones(2, np.float32), 'gamma': np.zeros(2, np.float32)},
      _RULES, _abstract(), what='toy')
  np.testing.assert_array_equal(params['dense']['kernel'], weight.T)
  assert jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(_abstract())


def test_assemble_lists_every_mismatch_at_once():
  state = {'fc.weight': np.zeros((2, 4), np.float32),   # in=4, model expects 3
           'fc.bias': np.zeros(2, np.float32),
           'extra.weight': np.zeros(1, np.float32),
           'another': np.zeros(1, np.float32)}          # 'gamma' missing
  with pytest.raises(torch_io.CheckpointMismatchError) as info:
    torch_io.assemble_params(state, _RULES, _abstract(), what='toy')
  message = str(info.value)
  assert 'missing (1): gamma' in message
  assert 'unexpected (2): another, extra.weight' in message
  assert 'mis-shaped (1): fc.weight (2, 4) -> (4, 2), expected (3, 2)' in message


def test_assemble_ignore_and_layout_errors():
  state = {'fc.weight': np.zeros((2, 3, 1), np.float32), 'fc.bias': np.zeros(2, np.float32),
           'gamma': np.zeros(2, np.float32), 'mask_token': np.zeros(2, np.float32)}
  with pytest.raises(torch_io.CheckpointMismatchError, match='must be 2-D') as info:
    torch_io.assemble_params(state, _RULES, _abstract(), what='toy',
                             ignore=lambda k: k == 'mask_token')
  assert 'unexpected' not in str(info.value)


def test_kernel_layouts():
  conv1d = np.arange(6, dtype=np.float32).reshape(3, 2, 1)  # (out, in, 1)
  np.testing.assert_array_equal(torch_io.conv1x_kernel(conv1d), conv1d[:, :, 0].T)
  conv2d = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)  # (out, in, kh, kw)
  got = torch_io.conv2d_kernel(conv2d)
  assert got.shape == (4, 5, 3, 2)
  assert got[1, 2, 0, 1] == conv2d[1, 0, 1, 2]
