"""cnnvis: find out why an image classifier fails, with heatmaps of its wrong and unsure predictions."""

__version__ = "0.1.0"
