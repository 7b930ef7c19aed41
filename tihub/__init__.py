"""tihub: a hub for Stable Diffusion textual-inversion embeddings.

The package root imports nothing heavy: `import tihub` must stay cheap, and torch is only ever
imported inside `tihub.engine`.
"""

__version__ = "0.1.0"
