"""remn: robust and efficient memory network for semi-supervised video object segmentation."""
from remn.build import build_model
from remn.config import PRESETS, ModelConfig

__version__ = "0.1.0"
__all__ = ["build_model", "ModelConfig", "PRESETS", "__version__"]
