"""Stage 2 end to end on a tiny generated dataset: exact resume, summary.json, export."""

import dataclasses
import glob
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.configs import wall as wall_configs
from jepa_jax import checkpoint
from jepa_jax.data import trajectories
from jepa_jax.models import vit
from jepa_jax.world_model import model as model_lib
from jepa_jax.world_model import train

pytestmark = pytest.mark.slow


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
  root = tmp_path_factory.mktemp('wm')
  config = wall_configs.get_config('smoke')
  config.data.update(dict(image_size=32, num_train_trajectories=8,
                          num_validation_trajectories=4, trajectory_length=25))
  config.world_model.update(dict(
      predictor_config=dict(depth=1, num_heads=2), proprio_emb_dim=4, batch_size=8,
      num_steps=4, log_every=1, checkpoint_every=2, eval_horizon=2, eval_batch_size=8,
      eval_num_batches=2,
      # Constant decay: the 2-step "interrupted" run then computes the same first 2 steps as
      # the 4-step run (a schedule would follow each run's num_steps).
      weight_decay_start=None))
  config.mesh.update(dict(data=-1, fsdp=2))  # 4 x 2 fake devices
  trajectories.generate(str(root / "data"), config.env, config.data, config.seed)
  enc_cfg = vit.vit_config('tiny', image_size=32, width=16, depth=1, num_heads=2)
  params = vit.ViTEncoder(enc_cfg).init(jax.random.PRNGKey(0), jnp.zeros((1, 2, 32, 32, 3)))
  checkpoint.save_model(root / 'encoder', kind='vit', config=dataclasses.asdict(enc_cfg),
                        params=params['params'],
                        extra={'pixel_mean': np.asarray(vit.IMAGENET_MEAN),
                               'pixel_std': np.asarray(vit.IMAGENET_STD)})
  return root, config


def run(root, config, workdir, num_steps):
  config = config.copy_and_resolve_references()
  config.world_model.num_steps = num_steps
  return train.train(config, str(root / workdir), str(root / 'data'), str(root / 'encoder'))


def resume_and_compare(root, config, prefix=''):
  """Trains 2 steps ("interrupted", checkpointed), resumes to 4, and trains 4 straight; asserts
  the two exports are identical. Returns (resumed summary, straight summary, straight params)."""
  run(root, config, f'{prefix}resumed', num_steps=2)
  resumed = run(root, config, f'{prefix}resumed', num_steps=4)
  straight = run(root, config, f'{prefix}straight', num_steps=4)
  _, a = model_lib.load_world_model(root / f'{prefix}resumed' / 'model')
  _, b = model_lib.load_world_model(root / f'{prefix}straight' / 'model')
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)
  return resumed, straight, b


def test_interrupted_and_resumed_equals_uninterrupted(setup):
  root, config = setup
  resumed, straight, b = resume_and_compare(root, config)
  assert resumed['rollout_error'] == straight['rollout_error']
  assert resumed['num_steps'] == straight['num_steps'] == 4
  # A checkpoint written with other settings is never resumed.
  changed = config.copy_and_resolve_references()
  changed.world_model.update(num_steps=6, lr=0.5)
  with pytest.raises(ValueError, match=r"world_model\.lr: 0\.001 -> 0\.5.*new --workdir"):
    train.train(changed, str(root / 'straight'), str(root / 'data'), str(root / 'encoder'))
  # Nor is a finished run silently "shortened": its export would be the longer-trained model.
  shorter = config.copy_and_resolve_references()
  shorter.world_model.num_steps = 2
  with pytest.raises(ValueError, match=r'already holds step 4, past world_model\.num_steps=2'):
    train.train(shorter, str(root / 'straight'), str(root / 'data'), str(root / 'encoder'))

  # summary.json: per-step errors and means, model and constant baseline side by side.
  with open(root / 'straight' / 'summary.json') as f:
    summary = json.load(f)
  for key in ('rollout_error', 'constant_baseline'):
    for channel in ('visual', 'proprio'):
      assert len(summary[key][channel]) == 2
      np.testing.assert_allclose(summary[key][f'{channel}_mean'], np.mean(summary[key][channel]))
  assert glob.glob(os.path.join(root, 'straight', 'events.out.tfevents.*'))
  # The export carries the frozen encoder unchanged.
  _, _, enc_params, _ = checkpoint.load_model(root / 'encoder')
  for x, y in zip(jax.tree.leaves(enc_params), jax.tree.leaves(b['encoder'])):
    np.testing.assert_array_equal(x, y)


def test_pseudo_labels_train_on_every_trajectory_and_resume_exactly(setup):
  # Half the 8 trajectories labelled; the other 4 pseudo-labelled by the inverse model on
  # proprio (the config's world model reads it). The labels are a pure function of the data
  # and the seed, so a resumed run equals an uninterrupted one.
  root, config = setup
  config = config.copy_and_resolve_references()
  config.labeled_fraction = 0.5
  config.world_model.pseudo_labels = True
  resumed, straight, _ = resume_and_compare(root, config, prefix='pseudo_')
  assert straight['labeled_trajectories'] == 4
  report = straight['pseudo_labels']
  assert report == resumed['pseudo_labels']
  assert report['labelled_trajectories'] == report['pseudo_labelled_trajectories'] == 4
  assert report['inverse_model_inputs'] == 'proprio'
  # Without the setting the same fraction trains on the labelled 4 alone and reports nothing.
  config.world_model.pseudo_labels = False
  assert 'pseudo_labels' not in run(root, config, 'labelled_only', num_steps=2)
