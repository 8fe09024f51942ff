"""Dataset integrity records: truncated, edited, replaced or missing files (jepa_jax.data.integrity)."""

import json
import os
import shutil
import zlib

import numpy as np
import pytest
import tensorflow_datasets as tfds

from jepa_jax.data import integrity

HINT = 'python -m experiments.generate_data --config=experiments/configs/wall.py:smoke --workdir=W'
COUNTS = {'train': 12, 'validation': 5}


class ToyTrajectories(tfds.core.GeneratorBasedBuilder):
  """A real TFDS ArrayRecord builder, as the project's builders are (no TensorFlow needed)."""

  VERSION = tfds.core.Version('1.0.0')

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self, disable_shuffling=True,
        features=tfds.features.FeaturesDict({
            'actions': tfds.features.Tensor(shape=(4, 2), dtype=np.float32)}))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {split: self._generate_examples(split, n) for split, n in COUNTS.items()}

  def _generate_examples(self, split, count):
    rng = np.random.default_rng(len(split))
    for i in range(count):
      yield i, {'actions': rng.normal(size=(4, 2)).astype(np.float32)}


@pytest.fixture(scope='module')
def built(tmp_path_factory):
  """The toy dataset, built once; tests copy it."""
  builder = ToyTrajectories(data_dir=str(tmp_path_factory.mktemp('tfds')),
                            file_format='array_record')
  builder.download_and_prepare()
  return str(builder.data_dir)


@pytest.fixture
def dataset(built, tmp_path):
  path = str(tmp_path / 'dataset')
  shutil.copytree(built, path)
  integrity.record(path)
  return path


def _shard(path, split):
  names = [n for n in os.listdir(path) if f'-{split}.array_record' in n]
  assert len(names) == 1
  return os.path.join(path, names[0])


def test_record_lists_every_shard_with_size_crc_and_count(dataset):
  with open(os.path.join(dataset, integrity.INTEGRITY_FILENAME)) as f:
    record = json.load(f)
  for split, count in COUNTS.items():
    shard = _shard(dataset, split)
    with open(shard, 'rb') as f:
      content = f.read()
    assert record['files'][os.path.basename(shard)] == {
        'bytes': len(content), 'crc32': zlib.crc32(content)}
    assert record['splits'][split]['num_examples'] == count
    assert record['splits'][split]['files'] == [os.path.basename(shard)]
  assert integrity.problem(dataset) is None
  integrity.verify(dataset, HINT)


def _damaged_message(dataset, **kwargs):
  with pytest.raises(ValueError) as info:
    integrity.verify(dataset, HINT, **kwargs)
  message = str(info.value)
  assert '\n' not in message and message.endswith(f'rebuild it with `{HINT}`')
  return message


def test_truncated_shard(dataset):
  shard = _shard(dataset, 'train')
  size = os.path.getsize(shard)
  with open(shard, 'r+b') as f:
    f.truncate(size - 100)
  assert f'{shard} has {size - 100} bytes, the build wrote {size}' in _damaged_message(dataset)


def test_missing_shard(dataset):
  shard = _shard(dataset, 'validation')
  os.remove(shard)
  assert f'{shard} is missing' in _damaged_message(dataset)


def test_changed_bytes_of_the_same_size(dataset):
  shard = _shard(dataset, 'train')
  with open(shard, 'r+b') as f:
    f.seek(200)
    byte = f.read(1)
    f.seek(200)
    f.write(bytes([byte[0] ^ 0xFF]))
  assert f'{shard} has a different crc32' in _damaged_message(dataset)
  integrity.verify(dataset, HINT, check_checksums=False)  # sizes alone cannot see it


def test_edited_shard_lengths(dataset):
  """The readers trust dataset_info.json: 12 -> 3 would silently train on 3 examples."""
  info_path = os.path.join(dataset, 'dataset_info.json')
  with open(info_path) as f:
    info = json.load(f)
  train = next(s for s in info['splits'] if s['name'] == 'train')
  train['shardLengths'] = ['3']
  with open(info_path, 'w') as f:
    json.dump(info, f)
  assert len(tfds.builder_from_directory(dataset).as_data_source('train')) == 3  # the danger
  message = _damaged_message(dataset)
  assert (f"{info_path} reports split 'train' as 3 examples in shards [3], but the build wrote "
          '12 in [12]') in message


def test_unreadable_dataset_info(dataset):
  info_path = os.path.join(dataset, 'dataset_info.json')
  with open(info_path, 'w') as f:
    f.write('{"name": ')
  assert f'{info_path} is missing or unreadable' in _damaged_message(dataset)


def test_missing_record_and_missing_folder(dataset, tmp_path):
  os.remove(os.path.join(dataset, integrity.INTEGRITY_FILENAME))
  assert 'integrity.json is missing' in _damaged_message(dataset)
  assert f'{tmp_path / "nowhere"} does not exist' in _damaged_message(str(tmp_path / 'nowhere'))


def test_record_refuses_a_build_whose_shards_disagree_with_its_info(built, tmp_path):
  path = str(tmp_path / 'dataset')
  shutil.copytree(built, path)
  info_path = os.path.join(path, 'dataset_info.json')
  with open(info_path) as f:
    info = json.load(f)
  next(s for s in info['splits'] if s['name'] == 'validation')['shardLengths'] = ['4']
  with open(info_path, 'w') as f:
    json.dump(info, f)
  with pytest.raises(RuntimeError, match=r'holds 5 records but dataset_info.json says 4'):
    integrity.record(path)
  assert not os.path.exists(os.path.join(path, integrity.INTEGRITY_FILENAME))
