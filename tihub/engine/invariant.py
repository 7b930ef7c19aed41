"""Batch-invariant CPU math: an image comes out the same whatever batch (grid) it is drawn in.

On CPU, kernels give a row a result that depends on the other rows of the call: oneDNN
convolutions (algorithm chosen per batch shape) and BLAS matrix products (blocking chosen per
row count, and even per memory alignment of the operands), by ~1e-6, which after a few steps
flips pixels. `batch_invariant` makes a UNet/VAE call compute every sample the same way whatever
the batch: convolutions take PyTorch's own kernel (per sample), convolutions and group norms get
fresh contiguous input (a batch of one can look channels-last and take another kernel), and
`nn.Linear` runs as one matrix product per sample (a batched product of equal shapes on freshly
allocated operands). GPUs are left alone.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


def _fresh(t: Any) -> Any:
    """A new contiguous copy: BLAS results can depend on where the data starts in memory (SIMD
    alignment), so the operands get fresh (allocator-aligned) storage."""
    import torch

    return t.clone(memory_format=torch.contiguous_format)


def _per_sample_linear(module: Any, x: Any) -> Any:
    import torch

    if x.dim() < 2:
        return torch.nn.functional.linear(x, module.weight, module.bias)
    lead = x.shape[:-1]
    rows = _fresh(x.reshape(lead[0], -1, x.shape[-1]))  # [B, M, K]: one product per sample
    w = _fresh(module.weight.t()).unsqueeze(0).expand(rows.shape[0], -1, -1)
    out = torch.bmm(rows, w)
    if module.bias is not None:
        out = out + module.bias
    return out.reshape(*lead, -1)


def _contiguous_conv(module: Any, x: Any) -> Any:
    return module._conv_forward(_fresh(x), module.weight, module.bias)


def _contiguous_group_norm(module: Any, x: Any) -> Any:
    import torch

    return torch.nn.functional.group_norm(_fresh(x), module.num_groups, module.weight, module.bias, module.eps)


@contextmanager
def batch_invariant(*modules: Any, device: Any = "cpu") -> Iterator[None]:
    """While inside, the given modules compute each sample independently of its batch (CPU only)."""
    import torch

    if torch.device(device).type != "cpu":
        yield
        return
    patched = []
    mkldnn = torch._C._get_mkldnn_enabled()
    torch._C._set_mkldnn_enabled(False)  # (not torch.backends.mkldnn.flags: it warns about TF32)
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
        torch._C._set_mkldnn_enabled(mkldnn)
