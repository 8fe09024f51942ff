"""Trajectory datasets: the TFDS builder of every environment (trajectories), grain clip
pipelines (pipeline), normalisation statistics (stats)."""
