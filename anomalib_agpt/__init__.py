"""AnomalyGPT for anomalib: a pixel heatmap and an image score from ImageBind-Huge features."""

from .lightning_model import AnomalyGPT
from .torch_model import AnomalyGPTModel

__version__ = "0.1.0"

__all__ = ["AnomalyGPT", "AnomalyGPTModel", "__version__"]
