"""AnomalyGPT for anomalib: pixel heatmap, image score and (later) a text explanation."""

__version__ = "0.1.0"
