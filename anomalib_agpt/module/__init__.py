"""The anomalib face: the ``AnomalyGPT`` Lightning module and its typed option groups, on top of the house."""
