"""What the model has learned: images optimised to drive a class, a channel or a neuron (feature
visualisation), deep dream, and feature inversion, in the style of Olah et al., "Feature Visualization",
Distill 2017: an image parameterised in decorrelated Fourier space, random transformations at every step,
Adam, and many objectives optimised together in one batch."""
