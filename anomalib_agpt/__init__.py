"""AnomalyGPT for anomalib: a pixel heatmap and an image score from ImageBind-Huge features."""

from anomalib_agpt import _moved

_moved.install()  # 0.1's module paths (user imports, pickled exports) resolve to their new homes

from anomalib_agpt.model.lightning_model import AnomalyGPT  # noqa: E402
from anomalib_agpt.model.torch_model import AnomalyGPTModel  # noqa: E402

__version__ = "0.1.0"

__all__ = ["AnomalyGPT", "AnomalyGPTModel", "__version__"]
