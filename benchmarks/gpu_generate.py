"""GPU generation throughput: tihub against diffusers at the same batch and dtype, and the peak.

Random weights with the real shapes (tihub.engine.tiny.sd15_arch_pipeline / sdxl_arch_pipeline),
so the compute is the real model's: SD1.5 at 512x512 and SDXL base at 1024x1024, 20 steps, CFG
7.5, bf16 (fp16 where bf16 is only emulated), Euler. Interleaved rounds of a batch of B images:

- tihub `Engine.run`, its UNet calls replayed from CUDA graphs (tihub.engine.unet_graph, checked
  once against eager calls) and eagerly; channels-last UNet, as `Engine.load` does on CUDA;
- peer 1: diffusers `pipe([prompt] * B)`, the same batch and dtype, its defaults (SDPA attention);
- peer 2: the same diffusers call with the well-known fast path: channels-last UNet,
  `torch.compile(unet)` (--compile-mode, default "default"; compile time printed apart), SDPA;
- with peer 2: tihub's loop around peer 2's compiled UNet, the other way to cut the launch
  overhead (the issue asks for graphs or compile, whichever measures faster);
- for information only: diffusers one image per call (what the README compared against before).

Printed: medians of images/s, the ratio to each peer (target: >= 1.5x peer 1), the achieved
TFLOP/s and its share of the GPU's dense bf16 datasheet peak and of a bf16 matmul measured here,
and peak memory. The work per image is counted, not assumed: FLOPs of one UNet CFG pair and one
VAE decode are counted on the meta device with torch.utils.flop_counter (matmul, conv,
attention; SD1.5 512: 1.61 + 2.51 TFLOP, 34.6 per image at 20 steps, close to NVIDIA's 1.68 + 2.54 in research/performance.md;
SDXL 1024: 13.5 + 10.5 TFLOP, 281 per image).

Dense bf16 peaks (NVIDIA datasheets; the datasheets print the sparse figure, twice these):
H100 SXM and H200 SXM 989; H100 NVL and H200 NVL 835; H100 PCIe 756; A100 312; L40S 362; L4 121;
A10 125; RTX 4090 165 (Ada whitepaper). A matmul rarely passes 80% of them (research: an
8192^3 bf16 matmul measured 798 TFLOP/s on an H100 and 788 on an H200), so both shares print.

--preview: embeddings previewed per GPU-hour with the standard grid (`grid.standard_preview`:
3 prompts x 2 seeds, Euler a, 20 steps, CFG 7, the model's native size), graphs on and off: the
figure a catalogue-scale farm run is planned from.

--exact-sampling: times the A1111-exact sampler path against the plain scheduler path (budget:
<= 5% slower) where this tree's `Settings` has the switch; until then it says it is absent.

    python benchmarks/gpu_generate.py --arch sd15           # on a GPU, about 2 minutes
    python benchmarks/gpu_generate.py --arch sdxl --rounds 2
    python benchmarks/gpu_generate.py --quick --device cpu  # tiny models, smoke test anywhere
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# (name fragment as torch reports it, dense bf16 TFLOP/s, source); the first match wins, so the
# PCIe/NVL variants come before the SXM parts whose names they contain
PEAK_BF16: list[tuple[str, float, str]] = [
    ("H100 PCIe", 756.0, "NVIDIA H100 datasheet (PCIe), 1,513 sparse"),
    ("H100 NVL", 835.0, "NVIDIA H100 NVL datasheet, 1,671 sparse"),
    ("H200 NVL", 835.0, "NVIDIA H200 datasheet (NVL), 1,671 sparse"),
    ("H100", 989.0, "NVIDIA H100 datasheet (SXM), 1,979 sparse"),
    ("H200", 989.0, "NVIDIA H200 datasheet (SXM), 1,979 sparse"),
    ("A100", 312.0, "NVIDIA A100 datasheet, 624 sparse"),
    ("L40S", 362.0, "NVIDIA L40S datasheet, 733 sparse"),
    ("L4", 121.0, "NVIDIA L4 datasheet, 242 sparse"),
    ("A10", 125.0, "NVIDIA A10 datasheet, 250 sparse"),
    ("4090", 165.0, "NVIDIA Ada whitepaper (RTX 4090, fp32 accumulate)"),
]

ARCHS = {"sd15": ("SD1.5", 512, 8), "sdxl": ("SDXL base", 1024, 4)}  # name, side, default batch
SHORT: dict[str, str] = {}  # variant label -> its name in the per-round lines
PROMPT = "a photo of a cat sitting on a sofa, detailed, soft light"


def peak_for(gpu: str, override: float | None) -> tuple[float | None, str]:
    if override:
        return override, "--peak"
    return next(((v, src) for k, v, src in PEAK_BF16 if k in gpu), (None, "unknown GPU: pass --peak"))


def matmul_tflops(device: Any, dtype: Any) -> float | None:
    """A bf16 8192^3 matmul's TFLOP/s here: the ceiling a real kernel mix can approach."""
    import torch

    if device.type != "cuda":
        return None
    a = torch.randn(8192, 8192, device=device, dtype=dtype)
    b = torch.randn(8192, 8192, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize(device)
    t = time.perf_counter()
    for _ in range(20):
        a @ b
    torch.cuda.synchronize(device)
    return 20 * 2 * 8192**3 / (time.perf_counter() - t) / 1e12


def tflop_per_image(pipe: Any, side: int, steps: int) -> float:
    """UNet CFG pairs x steps + one VAE decode, counted on meta copies of the pipeline's modules."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        unet = type(pipe.unet).from_config(pipe.unet.config)
        vae = type(pipe.vae).from_config(pipe.vae.config)
    lat = side // pipe.vae_scale_factor
    x = torch.empty(2, unet.config.in_channels, lat, lat, device="meta")
    ehs = torch.empty(2, 77, unet.config.cross_attention_dim, device="meta")
    kw: dict[str, Any] = {}
    if unet.config.addition_embed_type == "text_time":
        pooled = unet.config.projection_class_embeddings_input_dim - 6 * unet.config.addition_time_embed_dim
        kw["added_cond_kwargs"] = {"text_embeds": torch.empty(2, pooled, device="meta"), "time_ids": torch.empty(2, 6, device="meta")}
    with torch.no_grad(), FlopCounterMode(display=False) as unet_count:
        unet(x, torch.tensor(10.0, device="meta"), encoder_hidden_states=ehs, **kw)
    with torch.no_grad(), FlopCounterMode(display=False) as vae_count:
        vae.decode(torch.empty(1, vae.config.latent_channels, lat, lat, device="meta"))
    return (steps * unet_count.get_total_flops() + vae_count.get_total_flops()) / 1e12


def build(arch: str, quick: bool, device: Any, dtype: Any) -> Any:
    import torch

    from tihub.engine.tiny import sd15_arch_pipeline, sdxl_arch_pipeline, tiny_sd1_pipeline, tiny_sdxl_pipeline

    if quick:
        pipe = (tiny_sd1_pipeline if arch == "sd15" else tiny_sdxl_pipeline)()
    else:
        builder = sd15_arch_pipeline if arch == "sd15" else sdxl_arch_pipeline
        if device.type == "cuda":
            with torch.device(device):  # random init on the GPU: seconds instead of minutes
                pipe = builder()
        else:
            pipe = builder()
    pipe = pipe.to(device=device, dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def exact_switch() -> str | None:
    """The name of the A1111-exact sampling switch in this tree's Settings, if it has one."""
    from tihub.engine.generate import Settings

    names = {f.name for f in dataclasses.fields(Settings)}
    return next((n for n in ("exact", "a1111_exact", "exact_sampling") if n in names), None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", choices=["sd15", "sdxl", "both"], default="both")
    ap.add_argument("--quick", action="store_true", help="tiny models, 64x64, 2 steps (CPU smoke runs)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--batch", type=int, default=None, help="images per call (default: 8 for SD1.5, 4 for SDXL)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--peak", type=float, default=None, help="dense bf16 peak TFLOP/s of the GPU (default: from its name)")
    ap.add_argument("--compile-mode", default="default", help="torch.compile mode of peer 2 (e.g. max-autotune: minutes of compiling)")
    ap.add_argument("--no-compile-peer", action="store_true", help="skip peer 2 (on the CPU it is skipped unless --compile-peer)")
    ap.add_argument("--compile-peer", action="store_true", help="run peer 2 on the CPU too")
    ap.add_argument("--preview", action="store_true", help="also: embeddings previewed per GPU-hour with the standard grid")
    ap.add_argument("--exact-sampling", action="store_true", help="also: the A1111-exact sampler path against the plain one")
    args = ap.parse_args()

    import diffusers
    import torch
    import transformers

    from tihub.engine.models import native_bf16, pick_device, quiet

    quiet()
    device = pick_device(args.device)
    gpu = device.type == "cuda"
    dtype = (torch.bfloat16 if native_bf16(device) else torch.float16) if gpu else torch.float32
    name = torch.cuda.get_device_name(device) if gpu else "cpu"
    print(f"device: {name} | torch {torch.__version__} | diffusers {diffusers.__version__} | transformers {transformers.__version__} | {str(dtype).replace('torch.', '')} | {time.strftime('%Y-%m-%d')}")
    if gpu:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    peak, source = peak_for(name, args.peak)
    ceiling = matmul_tflops(device, dtype)
    if gpu:
        print(f"dense bf16 peak: {peak or '?'} TFLOP/s ({source}); an 8192^3 matmul here: {ceiling:.0f} TFLOP/s")
    compile_peer = not args.no_compile_peer and (gpu or args.compile_peer)
    for arch in (["sd15", "sdxl"] if args.arch == "both" else [args.arch]):
        try:
            run_arch(arch, args, device, dtype, peak, ceiling, compile_peer)
        except Exception as exc:  # noqa: BLE001 - one architecture failing still lets the other report
            import traceback

            print(f"  {arch}: FAILED ({type(exc).__name__}: {str(exc).strip()[:300]})")
            print("".join(traceback.format_exc().splitlines(keepends=True)[-12:]))  # device time is scarce: enough to mend it
        finally:
            if gpu:
                torch.cuda.empty_cache()


def run_arch(arch: str, args: Any, device: Any, dtype: Any, peak: float | None, ceiling: float | None, compile_peer: bool) -> None:
    import numpy as np
    import torch

    from tihub.engine.generate import Engine, Settings
    from tihub.engine.models import from_pipeline
    from tihub.engine.unet_graph import replayed_unet, unet_runner

    gpu = device.type == "cuda"
    title, side, batch = ARCHS[arch]
    batch = args.batch or batch
    steps, rounds = args.steps, args.rounds
    if args.quick:
        side, steps, batch, rounds = 64, 2, 2, 2
    t_build = time.perf_counter()
    pipe = build(arch, args.quick, device, dtype)
    work = tflop_per_image(pipe, side, steps)
    print(f"\n{title} architecture{' (tiny)' if args.quick else ''}, {side}x{side}, {steps} steps, CFG 7.5, batch {batch}, {rounds} interleaved rounds; {work:.3g} TFLOP per image (counted); built in {time.perf_counter() - t_build:.0f} s")

    def sync() -> None:
        if gpu:
            torch.cuda.synchronize(device)

    # two UNets with the same weights: diffusers' default layout for peer 1, channels-last (as
    # Engine.load does on CUDA) for tihub and peer 2; no layout is switched back and forth, as a
    # captured graph reads the weights where they were at capture
    unet = pipe.unet
    unet_cl = copy.deepcopy(unet).to(memory_format=torch.channels_last) if gpu else unet
    engine = Engine(from_pipeline(pipe, f"{arch}-arch"))
    settings = Settings(steps=steps, sampler="Euler", cfg_scale=7.5, width=side, height=side)
    notes: list[str] = []
    graph_mode = "auto" if gpu else "emulate"  # off CUDA: the graphs' data flow, emulated
    runner = unet_runner(unet_cl, device, graph_mode, notes.append)  # one for every round: one capture

    # Stage 1: the variants, each a function of a batch size that returns its pictures
    def tihub(graphs: bool) -> Callable[[int], Any]:
        def go(n: int) -> Any:
            pipe.unet = unet_cl
            try:
                if not graphs:
                    return engine.run([PROMPT] * n, [""] * n, list(range(n)), settings)[0]
                with replayed_unet(pipe, runner=runner):
                    return engine.run([PROMPT] * n, [""] * n, list(range(n)), settings)[0]
            finally:
                pipe.unet = unet

        return go

    def diffusers_call(n: int, per_call: int) -> Any:
        out = []
        for start in range(0, n, per_call):
            k = min(per_call, n - start)
            gens = [torch.Generator("cpu").manual_seed(start + i) for i in range(k)]
            out += pipe([PROMPT] * k, num_inference_steps=steps, guidance_scale=7.5, height=side, width=side, generator=gens).images
        return out

    compiled: dict[str, Any] = {}

    def diffusers_compiled(n: int) -> Any:
        first = "unet" not in compiled
        if first:
            compiled["unet"] = torch.compile(unet_cl, mode=args.compile_mode, fullgraph=True)
            t = time.perf_counter()
        pipe.unet = compiled["unet"]
        try:
            out = diffusers_call(n, n)
        finally:
            pipe.unet = unet
        if first:
            sync()
            print(f"  peer 2: torch.compile (mode {args.compile_mode}) and its first call took {time.perf_counter() - t:.0f} s")
        return out

    variants: dict[str, Callable[[int], Any]] = {
        "tihub, UNet CUDA graphs" if gpu else "tihub, UNet graphs (emulated)": tihub(True),
        "tihub, eager UNet": tihub(False),
        "diffusers, same batch (peer 1)": lambda n: diffusers_call(n, n),
    }
    if compile_peer:
        variants["diffusers + compile, channels-last (peer 2)"] = diffusers_compiled

        def tihub_compiled(n: int) -> Any:
            # tihub's loop around peer 2's compiled UNet (compiled in peer 2's warm-up): the
            # other way to cut launch overhead, so the faster of the two can be chosen
            pipe.unet = compiled["unet"]
            try:
                return engine.run([PROMPT] * n, [""] * n, list(range(n)), settings)[0]
            finally:
                pipe.unet = unet

        variants["tihub, compiled UNet"] = tihub_compiled
    SHORT.update(zip(variants, ["tihub graphs", "tihub eager", "peer 1", "peer 2", "tihub compiled"], strict=False))

    def timed(fn: Callable[[int], Any], n: int) -> tuple[float, int, Any]:
        sync()
        if gpu:
            torch.cuda.reset_peak_memory_stats(device)
        t = time.perf_counter()
        images = fn(n)
        sync()
        rate = n / (time.perf_counter() - t)
        return rate, (torch.cuda.max_memory_allocated(device) if gpu else 0), images

    # Stage 2: warm-up (cuDNN picks, graph capture, compile), then interleaved rounds
    rates: dict[str, list[float]] = {k: [] for k in variants}
    mems: dict[str, int] = {}
    failed: dict[str, str] = {}
    pictures: dict[str, Any] = {}
    for label, fn in variants.items():
        try:
            pictures[label] = timed(fn, batch)[2]
        except Exception as exc:  # noqa: BLE001 - a variant that cannot run is reported, the rest go on
            failed[label] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ''}"
    for r in range(rounds):
        line = []
        for label, fn in variants.items():
            if label in failed:
                continue
            rate, mem, _ = timed(fn, batch)
            rates[label].append(rate)
            mems[label] = max(mems.get(label, 0), mem)
            line.append(f"{SHORT[label]} {rate:.3f}")
        print(f"  round {r + 1}: " + " | ".join(line) + " images/s")
    one_rate = timed(lambda n: diffusers_call(n, 1), batch)[0]

    # Stage 3: the table
    medians = {k: statistics.median(v) for k, v in rates.items() if v}
    peer1 = medians.get("diffusers, same batch (peer 1)")
    peer2 = medians.get("diffusers + compile, channels-last (peer 2)")
    print(f"  {'variant':48s} {'images/s':>9s} {'vs peer 1':>9s} {'vs peer 2':>9s} {'TFLOP/s':>8s} {'% peak':>7s} {'% matmul':>8s} {'GiB':>6s}")
    for label, m in list(medians.items()) + [("diffusers, one image per call (information)", one_rate)]:
        tf = m * work
        cells = [f"{m:9.3f}", f"{m / peer1:8.2f}x" if peer1 else f"{'-':>9s}", f"{m / peer2:8.2f}x" if peer2 else f"{'-':>9s}"]
        cells += [f"{tf:8.1f}", f"{100 * tf / peak:6.1f}%" if peak and gpu else f"{'-':>7s}", f"{100 * tf / ceiling:7.1f}%" if ceiling else f"{'-':>8s}"]
        cells.append(f"{mems[label] / 2**30:6.2f}" if label in mems and gpu else f"{'-':>6s}")
        print(f"  {label:48s} " + " ".join(cells))
    for label, why in failed.items():
        print(f"  {label}: FAILED ({why})")
    graphed = next(iter(variants))
    if graphed in pictures and "tihub, eager UNet" in pictures:
        diff = max(float(np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16)).max()) for a, b in zip(pictures[graphed], pictures["tihub, eager UNet"], strict=True))
        replayed = runner.replaying
        print(f"  graphs: {'replayed' if replayed else 'NOT replayed'}; largest pixel difference, graphs vs eager: {diff:.0f} of 255")
    for note in dict.fromkeys(notes):
        print(f"  note: {note}")
    if args.exact_sampling:
        exact_overhead(engine, settings, batch, timed, rounds)
    if args.preview:
        pipe.unet = unet_cl
        try:
            preview_rate(pipe, arch, steps, side if args.quick else None, timed, runner)
        finally:
            pipe.unet = unet


def exact_overhead(engine: Any, settings: Any, batch: int, timed: Callable[..., Any], rounds: int) -> None:
    """The A1111-exact sampler path against the plain one, tihub eager, the same batch."""
    switch = exact_switch()
    if switch is None:
        print("  A1111-exact sampling is tihub's only sampler path (tihub/engine/sampling/): its cost is the"
              " 'tihub eager' row against 'diffusers, same batch' above (budget: no more than 5% slower)")
        return
    plain, exact = dataclasses.replace(settings, **{switch: False}), dataclasses.replace(settings, **{switch: True})
    runs: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(rounds):
        for on, s in ((False, plain), (True, exact)):
            runs[on].append(timed(lambda n, s=s: engine.run([PROMPT] * n, [""] * n, list(range(n)), s)[0], batch)[0])
    a, b = statistics.median(runs[False]), statistics.median(runs[True])
    print(f"  A1111-exact sampling ({switch}=True): {b:.3f} images/s against {a:.3f} plain: {100 * (a / b - 1):+.1f}% time (budget <= +5%)")


def preview_rate(pipe: Any, arch: str, steps: int, size: int | None, timed: Callable[..., Any], runner: Any) -> None:
    """Embeddings previewed per GPU-hour: one standard preview grid per embedding, as a farm run
    makes them (one engine, one graph runner for all of them)."""
    import numpy as np

    from tihub.engine.generate import Engine
    from tihub.engine.grid import standard_preview
    from tihub.engine.models import from_pipeline
    from tihub.engine.unet_graph import replayed_unet
    from tihub.formats.model import Embedding

    rng = np.random.default_rng(0)
    widths = {"clip_l": pipe.text_encoder.config.hidden_size}
    if arch == "sdxl":
        widths["clip_g"] = pipe.text_encoder_2.config.hidden_size
    names = [f"benchemb{i}" for i in range(3)]
    extra = {n: Embedding(n, {k: (rng.standard_normal((2, w)) * 0.01).astype(np.float32) for k, w in widths.items()}) for n in names}
    engine = Engine(from_pipeline(pipe, f"{arch}-arch"), extra=extra)

    def grids(which: list[str], graphs: bool) -> Callable[[int], None]:
        def go(_n: int) -> None:
            for n in which:
                if graphs:
                    with replayed_unet(pipe, runner=runner):
                        standard_preview(engine, n, "object", steps=steps, size=size)
                else:
                    standard_preview(engine, n, "object", steps=steps, size=size)

        return go

    timed(grids(names[:1], True), 1)  # warm-up: the capture of the grid's batch shape
    per_hour = {label: 3600 * 2 * timed(grids(names[1:], graphs), 1)[0] for label, graphs in (("graphs", True), ("eager", False))}
    print(f"  standard preview grid (6 images, Euler a, {steps} steps): {per_hour['graphs']:.0f} embeddings per GPU-hour with UNet graphs, {per_hour['eager']:.0f} eager")


if __name__ == "__main__":
    main()
