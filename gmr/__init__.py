"""gmr: learned parameter sharing for multi-task networks (Gumbel-Matrix routing, TAPS) in JAX/Flax.

Modules: allocation, components, layers, models, methods, taps, optim, train, checkpoint,
experiment, validate, data; analysis (statistics, tables, task embeddings and clustering of
finished runs).
"""

__version__ = "0.1.0"
