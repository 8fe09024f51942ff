"""Trajectory datasets: TFDS builders (wall_tfds), grain clip pipelines (pipeline), normalisation
statistics (stats)."""
