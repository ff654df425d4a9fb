"""Training loops (generator: Algorithm 5, segmentor: Algorithm 7), profiles and checkpoints.

Checkpoints are folders of config.json + safetensors (no pickle); runs resume from ``last/``.
"""

from .checkpoint import load_model, load_training_state, read_config, save_checkpoint
from .generator import generate_images, train_generator
from .profiles import PROFILES, resolve_profile
from .segmentor import train_segmentor

__all__ = ["PROFILES", "resolve_profile", "save_checkpoint", "load_model", "load_training_state",
           "read_config", "train_generator", "generate_images", "train_segmentor"]
