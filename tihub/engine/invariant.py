"""Batch-invariant CPU math: an image comes out the same whatever batch (grid) it is drawn in.

On CPU, two kernels give a row a result that depends on how many other rows share the call:
oneDNN convolutions (algorithm chosen per batch shape) and BLAS matrix products (blocking
chosen per row count), by ~1e-6, which after a few steps flips pixels. `batch_invariant`
makes a UNet/VAE call compute every sample the same way whatever the batch: convolutions take
PyTorch's own kernel (per sample), convolutions and group norms get contiguous input (a batch of one can look channels-last and take another kernel), and `nn.Linear` runs as one matrix product per sample (a
batched product of equal shapes). Speed on CPU is about the same; GPUs are left alone.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any


def _per_sample_linear(module: Any, x: Any) -> Any:
    import torch

    if x.dim() < 2:
        return torch.nn.functional.linear(x, module.weight, module.bias)
    lead = x.shape[:-1]
    rows = x.reshape(lead[0], -1, x.shape[-1])  # [B, M, K]: one product per sample
    w = module.weight.t().unsqueeze(0).expand(rows.shape[0], -1, -1)
    out = torch.bmm(rows, w)
    if module.bias is not None:
        out = out + module.bias
    return out.reshape(*lead, -1)


def _contiguous_group_norm(module: Any, x: Any) -> Any:
    import torch

    return torch.nn.functional.group_norm(x.contiguous(), module.num_groups, module.weight, module.bias, module.eps)


def _contiguous_conv(module: Any, x: Any) -> Any:
    return module._conv_forward(x.contiguous(), module.weight, module.bias)


@contextmanager
def batch_invariant(*modules: Any, device: Any = "cpu") -> Iterator[None]:
    """While inside, the given modules compute each sample independently of its batch (CPU only)."""
    import torch

    if torch.device(device).type != "cpu":
        yield
        return
    patched = []
    with ExitStack() as stack:
        stack.enter_context(torch.backends.mkldnn.flags(enabled=False))
        try:
            for root in modules:
                for mod in root.modules() if root is not None else ():
                    if "forward" in mod.__dict__:
                        continue
                    if isinstance(mod, torch.nn.Linear):
                        mod.forward = _per_sample_linear.__get__(mod)
                    elif isinstance(mod, torch.nn.Conv2d):
                        mod.forward = _contiguous_conv.__get__(mod)
                    elif isinstance(mod, torch.nn.GroupNorm):
                        mod.forward = _contiguous_group_norm.__get__(mod)
                    else:
                        continue
                    patched.append(mod)
            yield
        finally:
            for mod in patched:
                del mod.forward
