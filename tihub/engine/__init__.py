"""The generation and training engine: the only part of tihub that imports torch/diffusers.

Importing `tihub.engine` itself is cheap; submodules import torch when they are used.
"""
