"""The anomalib model and its tensor path: where an image goes (weights, encoder, pre-processing, maps, score)."""
