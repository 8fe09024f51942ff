"""Stage 1, V-JEPA pretraining on frames alone: multi-block and predictive 3D masks (masks.py),
the L1 loss on LayerNorm-ed targets (losses.py), and the sharded train step and the stage entry
`train(config, workdir, data_dir)` (train.py). The probes, geometry, SIGReg and batch
standardisation it shares with LeWM live in `jepa_jax.representation`."""
