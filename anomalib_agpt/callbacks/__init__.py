"""Lightning callbacks for AnomalyGPT: images with the text answer, and a JSON-lines prediction writer."""

from .visualizer import ExplanationVisualizer
from .writer import PredictionWriter

__all__ = ["ExplanationVisualizer", "PredictionWriter"]
