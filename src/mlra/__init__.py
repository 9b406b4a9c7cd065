"""mlra: Multi-Head Low-Rank Attention and the attention variants it is compared with."""

from mlra.checkpoints import load_checkpoint
from mlra.checkpoints.format import save_model
from mlra.config import FAMILIES, SIZES, VARIANTS, ModelConfig
from mlra.errors import CheckpointError, ConfigError, DataError, MlraError
from mlra.generate import generate
from mlra.model import ModelOutput, Transformer

__version__ = "0.1.0"

__all__ = [
    "FAMILIES", "SIZES", "VARIANTS", "CheckpointError", "ConfigError", "DataError", "MlraError",
    "ModelConfig", "ModelOutput", "Transformer", "__version__", "generate", "load_checkpoint",
    "save_model",
]
