"""Lightning callbacks for AnomalyGPT: images with the text answer, and a JSON-lines prediction writer."""

from anomalib_agpt.callbacks.visualizer import ExplanationVisualizer
from anomalib_agpt.callbacks.writer import PredictionWriter

__all__ = ["ExplanationVisualizer", "PredictionWriter"]
