"""Stage 1, V-JEPA pretraining: multi-block 3D masks (masks.py), the L1 loss on LayerNorm-ed
targets (losses.py), the sharded train step and the stage entry `train(config, workdir,
data_dir)` (train.py), and the linear probe of the frozen encoder (probe.py)."""
