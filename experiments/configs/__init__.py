"""Experiment configs (`ml_collections`), selected as `--config=<file>.py:<variant>`."""

import os

CONFIG_DIR = os.path.dirname(os.path.abspath(__file__))
# The binaries' default `--config`, found next to this file so that it works from any directory.
WALL_TINY = os.path.join(CONFIG_DIR, 'wall.py') + ':tiny'
