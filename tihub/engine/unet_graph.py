"""Generation's UNet call replayed from CUDA graphs: one launch per denoising step.

A denoising step is one UNet call of thousands of small kernels; at the batch sizes of a grid the
Python and dispatcher work to launch them is a large part of the step (training measured 92 ms
eager against 38 ms replayed for the same kernels, research/performance.md and train_step.py).
`GraphedUNet` captures the UNet call once per input shape and replays it:

- the wrapper is a plain callable, `runner(latents, t, encoder_hidden_states, **kw) -> noise_pred`
  (kw: whatever the UNet takes, e.g. SDXL's `added_cond_kwargs={"text_embeds", "time_ids"}`),
  so any sampling loop can call it in place of `unet(...).sample`;
- every tensor input is copied into a static buffer before the replay; the buffers (and the
  graph) are keyed by the shapes, dtypes and devices of the tensors and by the values of the
  non-tensor arguments, so a grid with two sizes holds two graphs (at most MAX_GRAPHS; further
  shapes run eagerly);
- a Python-number timestep becomes a tensor on the latents' device (a host-to-device copy cannot
  be captured), and a timestep tensor elsewhere is copied there;
- the output is a graph-owned tensor that the next replay overwrites, so it is returned as a copy
  (`clone_output=False` for a loop that consumes it before its next call);
- the correctness gate is training's: each graph's first replay on new data (its second call) is
  checked against an eager call on the same inputs; a mismatch, or a failed capture, is one note
  and every later call runs eagerly;
- the graphs read the UNet's weights where they were at capture: while a runner holds graphs the
  weights must stay put (no `.to()`, no memory-format change, no fused LoRA); make a new runner
  after any of those;
- `emulate=True` replays by re-running the UNet on the static buffers and writing its output into
  the captured output tensor: the same data flow without CUDA, which the CPU tests check against
  eager calls.

Integration point (for the sampling loop's owner). A loop that drives samplers through a
denoiser wraps the UNet once per generation call and calls the wrapper instead of the UNet:

    runner = unet_runner(pipe.unet, device, mode="auto", note=notes.append)
    ...
    noise_pred = runner(latent_in, t, encoder_hidden_states=cond, added_cond_kwargs=added)

A loop that still goes through a diffusers pipeline uses `replayed_unet(pipe, ...)` instead: a
context manager that routes `pipe.unet`'s forward through the same wrapper for the duration of
the call (diffusers calls `unet(x, t, encoder_hidden_states=..., return_dict=False)[0]`), and
gives the UNet back untouched afterwards. `benchmarks/gpu_generate.py` measures both ways.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from tihub.engine.train_step import relative_difference


def _flatten(value: Any, path: str, tensors: list[Any], key: list[Any]) -> Any:
    """Replace the tensors in a (nested dict / list / tuple) value with slot numbers; the
    tensors go to `tensors`, the structure and the non-tensor values to `key`."""
    import torch

    if isinstance(value, torch.Tensor):
        key.append((path, tuple(value.shape), value.dtype, str(value.device)))
        tensors.append(value)
        return _Slot(len(tensors) - 1)
    if isinstance(value, dict):
        return {k: _flatten(value[k], f"{path}.{k}", tensors, key) for k in sorted(value)}
    if isinstance(value, (list, tuple)):
        return type(value)(_flatten(v, f"{path}[{i}]", tensors, key) for i, v in enumerate(value))
    key.append((path, repr(value)))
    return value


@dataclass(frozen=True)
class _Slot:
    index: int


def _fill(template: Any, tensors: list[Any]) -> Any:
    """The inverse of _flatten: the structure with each slot replaced by its tensor."""
    if isinstance(template, _Slot):
        return tensors[template.index]
    if isinstance(template, dict):
        return {k: _fill(v, tensors) for k, v in template.items()}
    if isinstance(template, (list, tuple)):
        return type(template)(_fill(v, tensors) for v in template)
    return template


@dataclass
class _Graph:
    """One captured call: its input buffers, the structure to rebuild the call, its output."""

    template: Any
    static: list[Any]
    out: Any = None
    graph: Any = None
    replays: int = 0


@dataclass
class _Call:
    """One call's inputs, normalised: the timestep a tensor on the latents' device."""

    template: Any
    tensors: list[Any] = field(default_factory=list)
    key: tuple[Any, ...] = ()


class EagerUNet:
    """The UNet called as it is, with the wrapper's signature (no graphs anywhere)."""

    replaying = False

    def __init__(self, unet: Any) -> None:
        self.forward = unet.forward  # bound now: a later patch of unet.forward does not loop back

    def __call__(self, latents: Any, t: Any, encoder_hidden_states: Any = None, **kw: Any) -> Any:
        kw.pop("return_dict", None)
        return self.forward(latents, t, encoder_hidden_states=encoder_hidden_states, return_dict=False, **kw)[0]


class GraphedUNet(EagerUNet):
    """The UNet call replayed from a CUDA graph per input shape, checked once against eager."""

    WARMUP = 2  # eager calls on a side stream before capture: lazy library set-up happens there
    TOLERANCE = 2e-2  # relative difference allowed in the self-check (kernel sum order)
    MAX_GRAPHS = 4  # shapes beyond these run eagerly (each graph holds its activations)

    def __init__(self, unet: Any, emulate: bool = False, on_fallback: Callable[[str], None] | None = None, clone_output: bool = True) -> None:
        super().__init__(unet)
        self.emulate, self.on_fallback, self.clone_output = emulate, on_fallback, clone_output
        self.graphs: dict[tuple[Any, ...], _Graph] = {}
        self.dropped = False
        self.captures = self.replays = self.eager_calls = 0

    @property
    def replaying(self) -> bool:  # type: ignore[override]
        """Whether calls were replayed from a graph and no graph was dropped."""
        return not self.dropped and self.replays >= 1

    def __call__(self, latents: Any, t: Any, encoder_hidden_states: Any = None, **kw: Any) -> Any:
        kw.pop("return_dict", None)
        call = self._normalise(latents, t, encoder_hidden_states, kw)
        entry = None if self.dropped else self.graphs.get(call.key)
        if entry is None and not self.dropped and len(self.graphs) < self.MAX_GRAPHS:
            try:
                entry = self._capture(call)
            except Exception as exc:  # noqa: BLE001 - any capture failure: generation goes on eagerly
                first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
                self._drop(f"The CUDA graph capture of the UNet failed ({type(exc).__name__}: {first}); generation runs eagerly.")
        if entry is None:
            return self._eager(call)
        # copy this call's tensors into the captured buffers, then one launch for the whole UNet
        self._load(entry, call)
        self._replay(entry)
        entry.replays += 1
        self.replays += 1
        if entry.replays == 2:
            # this graph's first replay on new data: checked once against an eager call
            got = entry.out.clone()
            want = self._eager(call)
            worst = relative_difference([got], [want])
            if worst > self.TOLERANCE:
                self._drop(f"The CUDA graph replay of the UNet differed from an eager call by {worst:.1%}; generation runs eagerly.")
            return want
        return entry.out.clone() if self.clone_output else entry.out

    # -- stages of a call ---------------------------------------------------------------------

    def _normalise(self, latents: Any, t: Any, encoder_hidden_states: Any, kw: dict[str, Any]) -> _Call:
        import torch

        # the timestep as a tensor on the latents' device: the graph reads it from a buffer there
        t = torch.as_tensor(t).to(latents.device)  # a Python int: int64; a float: float32
        tensors: list[Any] = []
        key: list[Any] = []
        template = _flatten({"latents": latents, "t": t, "encoder_hidden_states": encoder_hidden_states, "kw": kw}, "", tensors, key)
        return _Call(template, tensors, tuple(key))

    def _eager(self, call: _Call) -> Any:
        self.eager_calls += 1
        return self._run(call.template, call.tensors)

    def _run(self, template: Any, tensors: list[Any]) -> Any:
        args = _fill(template, tensors)
        return self.forward(args["latents"], args["t"], encoder_hidden_states=args["encoder_hidden_states"], return_dict=False, **args["kw"])[0]

    def _capture(self, call: _Call) -> _Graph:
        import torch

        # the graph's input buffers: copies, so the caller's tensors stay the caller's
        entry = _Graph(call.template, [x.clone() for x in call.tensors])
        self.captures += 1
        if self.emulate:
            entry.out = self._run(entry.template, entry.static)
        else:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(self.WARMUP):
                    self._run(entry.template, entry.static)
            torch.cuda.current_stream().wait_stream(side)
            entry.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(entry.graph):
                entry.out = self._run(entry.template, entry.static)
        self.graphs[call.key] = entry
        return entry

    def _load(self, entry: _Graph, call: _Call) -> None:
        for dst, src in zip(entry.static, call.tensors, strict=True):
            dst.copy_(src)

    def _replay(self, entry: _Graph) -> None:
        if not self.emulate:
            entry.graph.replay()
            return
        # emulation: the same call on the same buffers, the result written into the same tensor
        entry.out.copy_(self._run(entry.template, entry.static))

    def _drop(self, message: str) -> None:
        """Forget every graph for good (later calls run eagerly), give back memory, say why."""
        import torch

        self.dropped = True
        self.graphs.clear()
        if not self.emulate and torch.cuda.is_available():
            torch.cuda.empty_cache()
        if self.on_fallback is not None:
            self.on_fallback(message)


def unet_runner(unet: Any, device: Any, mode: str = "auto", note: Callable[[str], None] | None = None, clone_output: bool = True) -> EagerUNet:
    """The UNet caller for a CUDA-graph mode (the hook a sampling loop calls once per generation).

    auto: graphs on CUDA, eager elsewhere without a word; on: the same, with a note where graphs
    cannot run; off: eager; emulate: the graphs' data flow without CUDA (tests).
    """
    import torch

    if mode not in ("auto", "on", "off", "emulate"):
        raise ValueError(f"CUDA-graph mode {mode!r} is not one of auto, on, off, emulate")
    device = torch.device(device)
    if mode == "emulate" or (mode in ("auto", "on") and device.type == "cuda"):
        return GraphedUNet(unet, emulate=mode == "emulate", on_fallback=note, clone_output=clone_output)
    if mode == "on" and note is not None:
        note(f"CUDA graphs need a CUDA device, not {device.type}; generation runs eagerly.")
    return EagerUNet(unet)


@contextlib.contextmanager
def replayed_unet(pipe: Any, mode: str = "auto", note: Callable[[str], None] | None = None, runner: EagerUNet | None = None) -> Iterator[EagerUNet]:
    """Route a diffusers pipeline's UNet calls through `unet_runner` for the duration of a call.

    diffusers calls `unet(x, t, encoder_hidden_states=..., return_dict=False)[0]` (or reads
    `.sample` with return_dict=True); both are answered. The UNet is given back as it was.
    Pass the `runner` yielded by an earlier call to keep its graphs (one capture per shape for
    many calls); a new one is made otherwise.
    """
    unet = pipe.unet
    if runner is None:
        runner = unet_runner(unet, next(unet.parameters()).device, mode, note, clone_output=True)

    def forward(sample: Any, timestep: Any, encoder_hidden_states: Any = None, return_dict: bool = True, **kw: Any) -> Any:
        out = runner(sample, timestep, encoder_hidden_states, **kw)
        if return_dict:
            from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

            return UNet2DConditionOutput(sample=out)
        return (out,)

    had_own = "forward" in vars(unet)
    unet.forward = forward
    try:
        yield runner
    finally:
        if had_own:
            unet.forward = runner.forward
        else:
            del unet.forward


__all__ = ["EagerUNet", "GraphedUNet", "unet_runner", "replayed_unet"]
