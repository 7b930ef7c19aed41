"""GPU training throughput: tihub vs the diffusers textual-inversion example loop vs the bf16 peak.

Random weights with the real shapes: the SD1.5 architecture (860M UNet, CLIP-L, KL VAE) at
512x512, batch 4, or with `--arch sdxl` the SDXL base architecture (2.6B UNet, CLIP-L and
OpenCLIP-bigG) at 1024x1024, batch 2. Samples per second of tihub's trainer (cached latents, only
the new vectors trained; eager and with its default CUDA-graph steps) and of the diffusers
example's per-step work (textual_inversion.py, or textual_inversion_sdxl.py's with both text
encoders: VAE encode every step, whole-table AdamW, rows restored), interleaved; the share of the
GPU's dense bf16 datasheet peak that tihub reaches (gpu_generate.PEAK_BF16: 989 TFLOP/s for an
H100/H200 SXM) and of a bf16 matmul measured here, counting the UNet forward and its activation
backward on the meta device (SD1.5 512: 1.67 TFLOP per sample, research says 1.7; SDXL 1024: 14.3);
and the peak GPU memory of each. `--precision fp16` gives the fp16 row: tihub with loss scaling
(its steps replayed from a graph that reads the GradScaler's scale) against the example loop in
fp16 autocast. `--smoke` instead trains tiny SD1/SDXL models in every precision, checks the
default CUDA-graph steps against eager runs and runs the CLI.

    python benchmarks/gpu_train.py                        # SD1.5, bf16, on a GPU, about 1 minute
    python benchmarks/gpu_train.py --arch sdxl --rounds 2
    python benchmarks/gpu_train.py --precision fp16 --rounds 2
    python benchmarks/gpu_train.py --quick --device cpu   # the same code at tiny sizes, anywhere
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_train import DiffusersExampleLoop, make_pictures, sync  # noqa: E402
from gpu_generate import matmul_tflops, peak_for  # noqa: E402


def build_pipe(quick: bool, device: Any, dtype: Any, channels_last: bool = True, arch: str = "sd15") -> Any:
    import torch

    from tihub.engine.tiny import sd15_arch_pipeline, sdxl_arch_pipeline, tiny_sd1_pipeline, tiny_sdxl_pipeline

    if quick:
        pipe = tiny_sd1_pipeline(text_width=768) if arch == "sd15" else tiny_sdxl_pipeline()
        return pipe.to(device=device, dtype=dtype)
    builder = sd15_arch_pipeline if arch == "sd15" else sdxl_arch_pipeline
    if device.type == "cuda":
        with torch.device(device):  # random init on the GPU: seconds instead of minutes
            pipe = builder()
        pipe = pipe.to(device=device, dtype=dtype)
    else:
        pipe = builder().to(device=device, dtype=dtype)
    if device.type == "cuda" and channels_last:
        pipe.unet.to(memory_format=torch.channels_last)
    return pipe


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny model, 64x64 (for CPU smoke runs)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--arch", choices=["sd15", "sdxl"], default="sd15", help="SD1.5 at 512 (batch 4) or SDXL base at 1024 (batch 2)")
    ap.add_argument("--precision", choices=["auto", "bf16", "fp16", "fp32"], default="auto", help="auto: bf16 where native, else fp16 with loss scaling")
    ap.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak of the GPU (default: from its name, gpu_generate.PEAK_BF16)")
    ap.add_argument("--gradient-checkpointing", action="store_true")
    ap.add_argument("--compile", action="store_true", help="torch.compile tihub's UNet (the peer stays eager)")
    ap.add_argument("--no-graphs", action="store_true", help="skip tihub's default (CUDA-graph) variant: eager only")
    ap.add_argument("--no-channels-last", action="store_true")
    ap.add_argument("--profile", action="store_true", help="also profile a few eager tihub steps: kernel time against wall time, and the kernels that dominate")
    ap.add_argument("--smoke", action="store_true", help="instead: train tiny SD1/SDXL models on the device in every precision and check the outputs")
    args = ap.parse_args()
    if args.smoke:
        smoke(args.device, args.quick)
        return

    import torch

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    gpu = device.type == "cuda"
    from tihub.engine.models import native_bf16

    if args.precision == "auto":
        dtype = torch.bfloat16 if gpu and native_bf16(device) else (torch.float16 if gpu else torch.float32)
    else:
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.precision]
    precision = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}[dtype]
    xl = args.arch == "sdxl"
    size = 64 if args.quick else (1024 if xl else 512)
    batch = args.batch_size or (2 if args.quick or xl else 4)
    steps = args.steps or (2 if args.quick else 30)
    name = torch.cuda.get_device_name(device) if gpu else "CPU"
    print(f"device: {name}; torch {torch.__version__}, diffusers {md.version('diffusers')}, transformers {md.version('transformers')}; {time.strftime('%Y-%m-%d')}")
    model = ("tiny SDXL-shaped UNet" if xl else "tiny UNet + 768-wide CLIP") if args.quick else ("SDXL base" if xl else "SD1.5") + " architecture (random weights)"
    print(f"model: {model}, {size}x{size}, batch {batch}, {precision}, {args.rounds} interleaved rounds x {steps} steps")
    t_build = time.perf_counter()
    pipe = build_pipe(args.quick, device, dtype, channels_last=not args.no_channels_last, arch=args.arch)
    work = train_tflop_per_sample(pipe, size)
    print(f"built the pipeline in {time.perf_counter() - t_build:.1f} s; {work:.3g} TFLOP per sample (UNet forward + activation backward, counted)")

    from tihub.engine.train import TrainConfig, train

    with tempfile.TemporaryDirectory(prefix="tihub-gpu-train-") as tmp:
        work = Path(tmp)
        model_dir = work / "model"
        model_dir.mkdir()
        pics = work / "pics"
        pictures = make_pictures(pics, 8, size)

        notes: list[str] = []

        def tihub_round(graphs: bool = False, profiler: Any = None) -> tuple[float, int]:
            stamps: list[float] = []
            warm = 8 if args.compile else (1 if args.quick else 3)

            def progress(info: dict) -> None:  # type: ignore[type-arg]
                if info["step"] == warm:
                    sync(device)
                    if gpu:
                        torch.cuda.reset_peak_memory_stats(device)
                    if profiler is not None:
                        profiler.start()
                    stamps.append(time.perf_counter())
                elif info["step"] == info["total"]:
                    sync(device)
                    stamps.append(time.perf_counter())
                    if profiler is not None:
                        profiler.stop()

            cfg = TrainConfig(
                name="bench", images=pics, model=str(model_dir), embeddings_dir=work / "emb", run_dir=work / "run",
                vectors=4, steps=steps + warm, lr="5e-3", batch_size=batch, size=(size, size), save_every=0,
                template="subject", overwrite=True, device=str(device), precision=precision, model_hash="bench",
                gradient_checkpointing=args.gradient_checkpointing, compile=args.compile,
                cuda_graphs=("auto" if gpu else "emulate") if graphs else "off",  # auto: tihub's default, a graph on CUDA; emulate: its data flow on the CPU
            )
            # a failed capture or self-check is one log line; shown, since it changes the figures
            result = train(cfg, log=lambda line: notes.append(line) if "CUDA graph" in line else None, progress=progress, pipe=pipe)
            if graphs and result.steps_from != "cuda graph":
                notes.append(f"the default run's steps came from: {result.steps_from}")
            peak = torch.cuda.max_memory_allocated(device) if gpu else 0
            return steps * batch / (stamps[1] - stamps[0]), peak

        peer = (DiffusersExampleLoopXL if xl else DiffusersExampleLoop)(pipe, pictures, 4, batch, size, device, dtype)

        def peer_round() -> tuple[float, int]:
            for _ in range(2):
                peer.step()
            sync(device)
            if gpu:
                torch.cuda.reset_peak_memory_stats(device)
            t = time.perf_counter()
            for _ in range(steps):
                peer.step()
            sync(device)
            peak = torch.cuda.max_memory_allocated(device) if gpu else 0
            return steps * batch / (time.perf_counter() - t), peak

        graphs = (gpu or args.quick) and not args.no_graphs and not args.gradient_checkpointing and not args.compile
        ours, graphed, theirs, mem_ours, mem_graphed, mem_theirs = [], [], [], [], [], []
        for r in range(args.rounds):
            a, ma = tihub_round()
            ours.append(a)
            mem_ours.append(ma)
            line = f"  round {r + 1}: tihub eager {a:8.2f} samples/s"
            if graphs:
                c, mc = tihub_round(graphs=True)
                graphed.append(c)
                mem_graphed.append(mc)
                line += f"   tihub (default: CUDA graph{'' if gpu else ', emulated'}) {c:8.2f} samples/s"
            b, mb = peer_round()
            theirs.append(b)
            mem_theirs.append(mb)
            print(f"{line}   diffusers-example loop {b:8.2f} samples/s")
        for note in dict.fromkeys(notes):
            print(f"  note: {note}")
        if args.profile:
            profile_steps(tihub_round, device, steps, batch)

    mo, mt = statistics.median(ours), statistics.median(theirs)
    print(f"median: tihub eager (--no-cuda-graphs) {mo:.2f} samples/s, diffusers-example loop {mt:.2f} samples/s, ratio {mo / mt:.2f}x")
    best = mo
    if graphed:
        mg = statistics.median(graphed)
        best = max(mo, mg)
        print(f"median: tihub (default: CUDA graph) {mg:.2f} samples/s, ratio {mg / mt:.2f}x the diffusers-example loop (target >= 3x), {mg / mo:.2f}x eager tihub")
    if gpu:
        achieved = best * work
        peak, source = peak_for(name, args.peak_tflops)
        ceiling = matmul_tflops(device, torch.bfloat16)
        share = f"{100 * achieved / peak:.1f}% of the {peak:.0f} TFLOP/s dense bf16 peak ({source})" if peak else "no known peak for this GPU (pass --peak-tflops)"
        print(f"tihub (best): {achieved:.0f} TFLOP/s at {work:.3g} TFLOP/sample = {share}; {100 * achieved / ceiling:.1f}% of an 8192^3 bf16 matmul here ({ceiling:.0f} TFLOP/s)")
        mem = f"tihub {max(mem_ours) / 2**30:.2f} GiB"
        if mem_graphed:
            mem += f" eager, {max(mem_graphed) / 2**30:.2f} GiB with the CUDA graph"
        print(f"peak GPU memory during steps (all hold the same UNet/VAE; the peer also an fp32 text encoder): {mem}, diffusers-example loop {max(mem_theirs) / 2**30:.2f} GiB")


def train_tflop_per_sample(pipe: Any, side: int) -> float:
    """One training sample's UNet forward and its backward to the text conditioning (weights
    frozen: activation gradients only), counted on a meta copy of the UNet."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        unet = type(pipe.unet).from_config(pipe.unet.config)
    unet.requires_grad_(False)
    lat = side // pipe.vae_scale_factor
    x = torch.empty(1, unet.config.in_channels, lat, lat, device="meta")
    ehs = torch.empty(1, 77, unet.config.cross_attention_dim, device="meta", requires_grad=True)
    kw: dict[str, Any] = {}
    if unet.config.addition_embed_type == "text_time":
        pooled = unet.config.projection_class_embeddings_input_dim - 6 * unet.config.addition_time_embed_dim
        kw["added_cond_kwargs"] = {"text_embeds": torch.empty(1, pooled, device="meta", requires_grad=True), "time_ids": torch.empty(1, 6, device="meta")}
    with FlopCounterMode(display=False) as count:
        unet(x, torch.tensor(10.0, device="meta"), encoder_hidden_states=ehs, **kw).sample.sum().backward()
    return count.get_total_flops() / 1e12


class DiffusersExampleLoopXL(DiffusersExampleLoop):
    """The per-step work of diffusers' textual_inversion_sdxl.py: both text encoders' tables
    trained (whole-table AdamW, rows restored), VAE encode and SDXL's time ids every step."""

    def __init__(self, pipe: Any, pictures: list[Path], n_vectors: int, batch: int, size: int, device: Any, dtype: Any, seed: int = 0) -> None:
        import copy

        import torch

        super().__init__(pipe, pictures, n_vectors, batch, size, device, dtype, seed)
        self.tok2 = copy.deepcopy(pipe.tokenizer_2)
        self.te2 = copy.deepcopy(pipe.text_encoder_2).to(device=device, dtype=torch.float32)
        names = ["<bench>"] + [f"<bench>_{i}" for i in range(1, n_vectors)]
        self.tok2.add_tokens(names)
        ids = self.tok2.convert_tokens_to_ids(names)
        self.te2.resize_token_embeddings(len(self.tok2), mean_resizing=False)
        table = self.te2.get_input_embeddings().weight
        with torch.no_grad():
            table[ids] = table[self.tok2.convert_tokens_to_ids("*")].clone()
        self.te2.requires_grad_(False)
        self.te2.get_input_embeddings().requires_grad_(True)
        self.te2.train()
        params = [*self.te.get_input_embeddings().parameters(), *self.te2.get_input_embeddings().parameters()]
        self.opt = torch.optim.AdamW(params, lr=5e-4, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)
        self.orig2 = table.detach().clone()
        self.keep2 = torch.ones(len(self.tok2), dtype=torch.bool, device=device)
        self.keep2[min(ids) : max(ids) + 1] = False
        self.time_ids = torch.tensor([[size, size, 0, 0, size, size]] * batch, device=device, dtype=dtype)

    def step(self) -> float:
        torch = self.torch
        pixels = self._pixels()
        ids = self.tok([self.prompt] * self.batch, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids.to(self.device)
        ids2 = self.tok2([self.prompt] * self.batch, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids.to(self.device)
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
            latents = self.vae.encode(pixels.to(self.vae.dtype)).latent_dist.sample().detach() * self.scale
            noise = torch.randn(latents.shape, generator=self.gen).to(self.device, latents.dtype)
            t = torch.randint(0, self.sched.config.num_train_timesteps, (self.batch,), generator=self.gen).to(self.device)
            noisy = self.sched.add_noise(latents, noise, t)
            out1 = self.te(ids, output_hidden_states=True)
            out2 = self.te2(ids2, output_hidden_states=True)
            ehs = torch.cat([out1.hidden_states[-2], out2.hidden_states[-2]], dim=-1).to(self.unet.dtype)
            added = {"text_embeds": out2.text_embeds.to(self.unet.dtype), "time_ids": self.time_ids}
            pred = self.unet(noisy.to(self.unet.dtype), t, ehs, added_cond_kwargs=added).sample
        loss = torch.nn.functional.mse_loss(pred.float(), noise.float())
        loss.backward()
        self.opt.step()
        self.opt.zero_grad()
        with torch.no_grad():
            self.te.get_input_embeddings().weight[self.keep] = self.orig[self.keep]
            self.te2.get_input_embeddings().weight[self.keep2] = self.orig2[self.keep2]
        return float(loss.detach())


def profile_steps(tihub_round: Any, device: Any, steps: int, batch: int) -> None:
    """Where an eager step's time goes: the GPU's kernel time against the wall time, per step."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    prof = profile(activities=activities)
    t = time.perf_counter()
    rate, _ = tihub_round(profiler=prof)
    wall_ms = 1000 * batch / rate
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    if not kernels:
        print(f"profile: {wall_ms:.1f} ms per step (profiled); no kernel events recorded ({time.perf_counter() - t:.0f} s)")
        return
    busy: dict[str, float] = {}
    for e in kernels:
        busy[e.name] = busy.get(e.name, 0.0) + e.time_range.elapsed_us()
    total_ms = sum(busy.values()) / 1000 / steps
    print(f"profile (eager, {steps} steps): wall {wall_ms:.1f} ms/step, kernels {total_ms:.1f} ms/step ({100 * total_ms / wall_ms:.0f}% busy), {len(kernels) / steps:.0f} kernels/step")
    for name, us in sorted(busy.items(), key=lambda kv: -kv[1])[:12]:
        print(f"  {us / 1000 / steps:7.2f} ms/step  {100 * us / 1000 / steps / total_ms:4.1f}%  {name[:110]}")


def smoke(device_name: str | None, quick: bool = False) -> None:
    """tihub train on the device: SD1 and SDXL (tiny), every precision, outputs checked.
    `quick` (CPU smoke runs): SD1 and SDXL in fp32 only, fewer steps, one CLI run."""
    import numpy as np
    import torch
    from safetensors.torch import load_file

    from tihub.engine.tiny import build_tiny_sd1, build_tiny_sdxl
    from tihub.engine.train import TrainConfig, train

    device = device_name or ("cuda" if torch.cuda.is_available() else "cpu")
    with tempfile.TemporaryDirectory(prefix="tihub-gpu-smoke-") as tmp:
        work = Path(tmp)
        pics = work / "pics"
        make_pictures(pics, 3, 64)
        models = {"sd1": build_tiny_sd1(work / "sd1"), "sdxl": build_tiny_sdxl(work / "sdxl")}
        if not quick:
            models["sd1-v"] = build_tiny_sd1(work / "sd1v", prediction_type="v_prediction")
        precisions = ["fp32", "bf16", "fp16", "auto"] if device.startswith("cuda") else ["fp32", "bf16"]
        if quick:
            precisions = precisions[:1]
        steps = 4 if quick else 12
        for family, model in models.items():
            for precision in precisions:
                for gc in (False, True) if precision == "auto" else (False,):
                    cfg = TrainConfig(
                        name=f"smoke{family.replace('-', '')}{precision}{int(gc)}", images=pics, model=str(model), embeddings_dir=work / "emb",
                        run_dir=work / "run" / f"{family}-{precision}-{gc}", vectors=3, steps=steps, lr="0.02", batch_size=2, save_every=steps // 2,
                        flip=True, device=device, precision=precision, gradient_checkpointing=gc, preview_every=steps // 2, preview_steps=2,  # a preview mid-run: replays go on after it
                        cuda_graphs="off",
                    )
                    t = time.perf_counter()
                    r = train(cfg, log=lambda _: None)
                    sd = load_file(str(r.output))
                    finite = all(bool(torch.isfinite(v).all()) for v in sd.values())
                    ok = finite and r.final_loss is not None and np.isfinite(r.final_loss) and len(r.checkpoints) == 2 and len(r.previews) == 2
                    print(f"  {'ok  ' if ok else 'FAIL'} {family:6s} {precision:5s} gc={int(gc)} loss {r.final_loss:.4f} keys {sorted(sd)} previews {len(r.previews)} {time.perf_counter() - t:.1f} s")
                    if precision in ("fp32", "bf16", "fp16") and not gc:
                        # the same run replayed from a CUDA graph (emulated off CUDA): the same
                        # vectors, up to the order of floating-point sums in the kernels
                        cfg.name, cfg.run_dir = cfg.name + "g", Path(str(cfg.run_dir) + "-graphs")
                        cfg.cuda_graphs = "auto" if device.startswith("cuda") else "emulate"  # auto: the default
                        lines: list[str] = []
                        t = time.perf_counter()
                        rg = train(cfg, log=lines.append)
                        sg = load_file(str(rg.output))
                        diff = max(float((sd[k].float() - sg[k].float()).abs().max()) for k in sd)
                        scale = max(float(v.float().abs().max()) for v in sd.values())
                        same = diff <= (1e-4 if precision == "fp32" else 2e-2) * max(scale, 1.0) and not any("runs eagerly" in x for x in lines) and rg.steps_from == "cuda graph"
                        print(f"  {'ok  ' if same else 'FAIL'} {family:6s} {precision:5s} default (steps from: {rg.steps_from}): max |graphs - eager| {diff:.2e} (vectors up to {scale:.2f}) {time.perf_counter() - t:.1f} s {' '.join(lines[-1:]) if not same else ''}")

        # the CLI as a user runs it, all defaults but the device: steps replayed from a graph
        import subprocess

        os.environ["TIHUB_HOME"] = str(work / "home")
        (work / "home" / "embeddings").mkdir(parents=True)
        cmd = [sys.executable, "-m", "tihub", "train", "clitok", "--images", str(pics), "--model", str(models["sd1"]), "--device", device, "--save-every", "10"]
        runs = [["--steps", "4"]] if quick else [["--steps", "30"], ["--steps", "40", "--resume"]]  # then resumed: a new capture
        for extra in runs:
            t = time.perf_counter()
            run = subprocess.run(cmd + extra, capture_output=True, text=True, timeout=120)
            last = (run.stdout.strip().splitlines() or ["(no output)"])[0]
            ok = run.returncode == 0 and ("replayed from a CUDA graph" in last) == device.startswith("cuda")
            print(f"  {'ok  ' if ok else 'FAIL'} tihub train {' '.join(extra)} (CLI, defaults): {last} [{time.perf_counter() - t:.1f} s]")
            if run.returncode:
                print(run.stderr.strip()[-800:])


if __name__ == "__main__":
    main()
