"""gmr: learned parameter sharing for multi-task networks (Gumbel-Matrix routing, TAPS) in JAX/Flax.

The modules, one line each, in the order a run flows through them: docs/architecture.md.
"""

__version__ = "0.1.0"
