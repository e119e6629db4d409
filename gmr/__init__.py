"""gmr: learned parameter sharing for multi-task networks (Gumbel-Matrix routing, TAPS) in JAX/Flax.

Modules: allocation, components, layers, models, methods, taps, optim, train, embeddings,
checkpoint, experiment, validate, data.
"""

__version__ = "0.1.0"
