"""The transformer, its configuration, hook points and exports."""

from circuitlab.models.config import ModelConfig, ModelConfigError
from circuitlab.models.transformer import CheckpointError, Transformer

__all__ = ["CheckpointError", "ModelConfig", "ModelConfigError", "Transformer"]
