"""``anomalib-agpt serve``: a web page to upload an image, see its heatmap and talk about the defect.

``handlers`` holds the request handlers (no web library needed to use or test them), on ``uploads``
(checking and reading what is uploaded) and ``display`` (the images the page shows); ``models`` builds
the served model (weights, a trained checkpoint or the demo preset) and ``app`` is the Gradio page and
the command line. Importing this package does not import Gradio.
"""

from anomalib_agpt.apps.serve.handlers import Analysis, ServeSession
from anomalib_agpt.apps.serve.uploads import BadInputError

__all__ = ["Analysis", "BadInputError", "ServeSession"]
