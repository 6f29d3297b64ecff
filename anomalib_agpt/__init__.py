"""AnomalyGPT for anomalib: a pixel heatmap and an image score from ImageBind-Huge features."""

import warnings

from anomalib_agpt import _moved

_moved.install()  # 0.1's module paths (user imports, pickled exports) resolve to their new homes

with warnings.catch_warnings():
    # Importing anomalib's model zoo warns about its own internals (timm.models.layers, dinov2): nothing
    # a user of this package can act on, so it is not shown while this package imports it.
    warnings.simplefilter("ignore", FutureWarning)
    warnings.simplefilter("ignore", DeprecationWarning)
    from anomalib_agpt.model.torch_model import AnomalyGPTModel
    from anomalib_agpt.module.lightning_model import AnomalyGPT
    from anomalib_agpt.module.options import (
        DecodingOptions,
        ExplanationOptions,
        FewShotOptions,
        InferenceOptions,
        TrainingOptions,
        WeightOptions,
    )

__version__ = "0.3.0"

__all__ = [
    "AnomalyGPT",
    "AnomalyGPTModel",
    "DecodingOptions",
    "ExplanationOptions",
    "FewShotOptions",
    "InferenceOptions",
    "TrainingOptions",
    "WeightOptions",
    "__version__",
]
