"""One training micro-batch: forward and backward, run eagerly or replayed from a CUDA graph.

A textual-inversion step at batch 4 is thousands of small kernel launches, and on a fast GPU the
Python and dispatcher work to launch them takes longer than the kernels (research/performance.md:
"at bs 1 the UNet is launch-bound"). With CUDA graphs (the default on CUDA, in every precision),
the first full-size micro-batch's forward and backward are captured once as a CUDA graph: later
micro-batches copy their tensors into the captured input buffers and replay the graph, a single
launch. On an H200 (SD1.5 architecture, 512x512, batch 4, bf16) an eager step took 92 ms for
38 ms of kernels, and a replayed one 38 ms: 2.4x.

Rules that keep a replay equal to an eager step:
- the captured function reads only the static input buffers (`MicroBatch` tensors made once);
  every Python-side input (prompts, SDXL sizes) is turned into tensors before the copy;
- gradients and the loss come back in graph-owned tensors that the next replay overwrites, so
  the caller consumes them (adds them up, or hands them to the optimizer) before the next call;
- one batch shape is captured; other shapes (pictures of another size, without resizing) run
  eagerly;
- the first replay on new data is checked once against an eager step on the same batch; a
  mismatch (or a failed capture) is one note and the rest of the run is eager;
- capture needs no host syncs in the step, static shapes, and no gradient checkpointing (it
  reads the RNG state, which a capture forbids).

fp16 with loss scaling is captured too. The graph multiplies the loss by the GradScaler's own
scale tensor (`scaler.scale(loss)`, a device tensor that `scaler.update()` changes in place), so
every replay backpropagates with the scale in force at that step, never the one at capture. The
gradients come back scaled, exactly as from an eager `scaler.scale(loss).backward()`, and the
training loop hands them to the same `scaler.unscale_` / `scaler.step` / `scaler.update` calls as
an eager run: the inf/NaN check (one foreach kernel on the device, right after the replay), the
skipped step and the scale's backoff and growth are GradScaler's own, so they are the eager run's
by construction. A replay whose gradients overflow is compared with the eager step on where the
non-finite values are and on the finite rest.

`emulate=True` replays by re-running the captured function on the static buffers and writing
its results into the captured output tensors, the same data flow without CUDA; the CPU tests use
it to check the buffer handling against eager steps.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass
class MicroBatch:
    """The tensors of one micro-batch, all on the training device."""

    latents: Any
    noise: Any
    t: Any
    ids: list[Any]  # per text encoder, [batch, 77] token ids
    times: Any = None  # SDXL [batch, 6]
    weight: Any = None  # alpha loss weights [batch, 1, h, w]

    def tensors(self) -> list[Any]:
        return [self.latents, self.noise, self.t, *self.ids, self.times, self.weight]

    def shape_key(self) -> tuple[Any, ...]:
        return tuple(None if x is None else (tuple(x.shape), x.dtype) for x in self.tensors())


class EagerStep:
    """Forward and backward of one micro-batch; returns (loss, gradients of the new vectors)."""

    replaying = False  # never from a graph

    def __init__(self, session: Any, scale: float, scaler: Any = None) -> None:
        self.session, self.scale, self.scaler = session, scale, scaler

    def __call__(self, mb: MicroBatch) -> tuple[Any, list[Any]]:
        for p in self.session.params:
            p.grad = None
        loss = self.session.loss_from(mb.latents, mb.noise, mb.t, mb.ids, mb.times, mb.weight) * self.scale
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
        return loss.detach(), [p.grad for p in self.session.params]


class GraphedStep:
    """Like EagerStep, but replays a captured graph for the first full-size batch shape."""

    WARMUP = 3  # eager runs on a side stream before capture: lazy library set-up happens there
    TOLERANCE = 1e-2  # relative difference allowed in the self-check (kernel sum order, atomics)

    def __init__(self, session: Any, scale: float, batch_size: int, emulate: bool = False, on_fallback: Callable[[str], None] | None = None, scaler: Any = None) -> None:
        self.session, self.scale, self.batch_size, self.emulate = session, scale, batch_size, emulate
        self.on_fallback = on_fallback
        self.scaler = scaler  # fp16: its scale tensor is read inside the graph
        self.eager = EagerStep(session, scale, scaler)
        self.key: tuple[Any, ...] | None = None
        self.static: MicroBatch | None = None
        self.static_loss: Any = None
        self.static_grads: list[Any] = []
        self.graph: Any = None
        self.replays = 0

    @property
    def replaying(self) -> bool:
        """Whether steps are replayed from the graph: captured, replayed, and not dropped."""
        return self.static is not None and self.replays >= 1

    def __call__(self, mb: MicroBatch) -> tuple[Any, list[Any]]:
        if self.key is None and mb.latents.shape[0] == self.batch_size:
            try:
                self._capture(mb)
            except Exception as exc:  # noqa: BLE001 - any capture failure: the run goes on eagerly
                self._drop("capture failed")
                if self.on_fallback is not None:
                    first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
                    self.on_fallback(f"The CUDA graph capture failed ({type(exc).__name__}: {first}); training runs eagerly.")
        if mb.shape_key() != self.key:
            return self.eager(mb)
        # copy this micro-batch into the captured buffers, then one launch for the whole step
        self._load(mb)
        self._replay()
        self.replays += 1
        if self.replays == 2:
            # the first replay on new data: checked once against an eager step on the same batch
            return self._self_check(mb)
        return self.static_loss, self.static_grads

    def _self_check(self, mb: MicroBatch) -> tuple[Any, list[Any]]:
        """Compare this replay with an eager step; on a mismatch, drop the graph for good."""
        got = [self.static_loss.clone(), *(g.clone() for g in self.static_grads)]
        loss, grads = self.eager(mb)
        worst = relative_difference(got, [loss, *grads])
        if worst <= self.TOLERANCE:
            return loss, grads
        self._drop()
        if self.on_fallback is not None:
            self.on_fallback(f"The CUDA graph replay differed from an eager step by {worst:.1%}; training runs eagerly.")
        return loss, grads

    def _drop(self, why: str = "graph dropped") -> None:
        """Forget the graph for good (later batches run eagerly) and give back its memory."""
        import torch

        self.key = (why,)
        self.static = self.graph = self.static_loss = None
        self.static_grads = []
        if not self.emulate and torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _load(self, mb: MicroBatch) -> None:
        assert self.static is not None
        for dst, src in zip(self.static.tensors(), mb.tensors(), strict=True):
            if dst is not None:
                dst.copy_(src)

    def _body(self) -> Any:
        """The captured work: reads only the static buffers."""
        s = self.static
        assert s is not None
        loss = self.session.loss_from(s.latents, s.noise, s.t, s.ids, s.times, s.weight) * self.scale
        # fp16: the scaler's scale tensor is read by the graph, so replays follow its updates
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
        return loss.detach()

    def _capture(self, mb: MicroBatch) -> None:
        import torch

        params = self.session.params
        def own(x: Any) -> Any:
            return None if x is None else x.clone()

        # the graph's input buffers: copies, so the first batch's tensors stay the caller's
        self.static = MicroBatch(own(mb.latents), own(mb.noise), own(mb.t), [own(x) for x in mb.ids], own(mb.times), own(mb.weight))
        self.key = mb.shape_key()
        if self.scaler is not None:
            # the scale tensor is made lazily on first use: made here, before the graph reads it
            self.scaler.scale(torch.ones((), device=mb.latents.device))
        if self.emulate:
            for p in params:
                p.grad = None
            self.static_loss = self._body()
        else:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(self.WARMUP):
                    for p in params:
                        p.grad = None
                    self._body()
            torch.cuda.current_stream().wait_stream(side)
            for p in params:
                p.grad = None
            # the warm-up's cached blocks cannot serve the graph's private pool: hand them back
            # so capturing does not hold two copies of the activations
            torch.cuda.empty_cache()
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.static_loss = self._body()
        # the gradient tensors the graph writes on every replay
        self.static_grads = [p.grad for p in params]

    def _replay(self) -> None:
        if not self.emulate:
            self.graph.replay()
            return
        # emulation: the same function on the same buffers, results written into the same tensors
        for p in self.session.params:
            p.grad = None
        loss = self._body()
        self.static_loss.copy_(loss)
        for dst, p in zip(self.static_grads, self.session.params, strict=True):
            dst.copy_(p.grad)


def relative_difference(got: list[Any], want: list[Any]) -> float:
    """The largest relative L2 difference between paired tensors (inf where they disagree on
    which values are not finite: an fp16 overflow must happen in both or in neither)."""
    worst = 0.0
    for a, b in zip(got, want, strict=True):
        a, b = a.float(), b.float()
        fa, fb = a.isfinite(), b.isfinite()
        if not bool((fa == fb).all()):
            return float("inf")
        a, b = a.where(fa, 0.0), b.where(fb, 0.0)
        worst = max(worst, float((a - b).norm() / (b.norm() + 1e-12)))
    return worst


def make_step(mode: str, session: Any, scale: float, batch_size: int, device: Any, scaler: Any, checkpointing: bool, compiled: bool, note: Callable[[str], None]) -> EagerStep | GraphedStep:
    """The micro-batch runner for a `--cuda-graphs` mode.

    auto: a graph wherever one can run (CUDA, no checkpointing, not compiled; fp16 included),
    eager elsewhere without a word; on: the same, with a note where it cannot; off: eager;
    emulate: the graph's data flow without CUDA (tests). A failed capture or self-check is a note.
    """
    refusal = graphs_refusal(device, checkpointing, compiled)
    if mode == "emulate" or (mode in ("auto", "on") and refusal is None):
        return GraphedStep(session, scale, batch_size, emulate=mode == "emulate", on_fallback=note, scaler=scaler)
    if mode == "on":
        note(f"{refusal}; training runs eagerly.")
    return EagerStep(session, scale, scaler)


def graphs_refusal(device: Any, checkpointing: bool, compiled: bool) -> str | None:
    """Why CUDA graphs cannot run in this configuration (None when they can)."""
    if device.type != "cuda":
        return f"CUDA graphs need a CUDA device, not {device.type}"
    if checkpointing:
        return "CUDA graphs are not used with --gradient-checkpointing"
    if compiled:
        return "CUDA graphs are not used with --compile"
    return None
