"""Embedded demo: a synthetic data set with a planted shortcut and a small CNN that takes it.

The train split pairs each shape class with a corner "watermark" most of the
time; the test split does not. The packaged model therefore makes mistakes on
the test split that Grad-CAM attributes to the corner instead of the shape.
"""
