"""Training steps per second: tihub's trainer vs the diffusers textual-inversion example's loop.

Both sides train the same model (a tiny UNet/VAE with an SD1.5-width text encoder: 768 wide,
49,408-token table), same pictures, batch, precision and device; rounds are interleaved
(tihub, peer, tihub, peer, ...) and the medians of the per-step times are compared.

The peer loop does what diffusers' `examples/textual_inversion/textual_inversion.py` does every
step: read and resize the pictures from disk, random flip, VAE-encode them, AdamW (weight decay
1e-2) over the whole token-embedding table, then copy back every row but the new ones.

    .venv/bin/python benchmarks/bench_train.py            # 6 rounds x 12 steps
    .venv/bin/python benchmarks/bench_train.py --quick    # 3 rounds x 6 steps, a smaller encoder
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402


def make_pictures(folder: Path, n: int, size: int) -> list[Path]:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        arr = np.random.default_rng(i).integers(0, 255, (size, size, 3), dtype=np.uint8)
        p = folder / f"{i:03d}-a red fox.png"
        Image.fromarray(arr).save(p)
        paths.append(p)
    return paths


class DiffusersExampleLoop:
    """The per-step work of diffusers' textual_inversion.py (no latent cache, whole-table AdamW)."""

    def __init__(self, pipe: Any, pictures: list[Path], n_vectors: int, batch: int, size: int, device: Any, dtype: Any, seed: int = 0) -> None:
        import torch
        from diffusers import DDPMScheduler

        self.torch = torch
        self.device, self.dtype, self.batch, self.size, self.pictures = device, dtype, batch, size, pictures
        self.vae, self.unet = pipe.vae, pipe.unet
        self.tok = copy.deepcopy(pipe.tokenizer)
        # the example keeps the text encoder in fp32 (it is trained); autocast runs the rest
        self.te = copy.deepcopy(pipe.text_encoder).to(device=device, dtype=torch.float32)
        names = ["<bench>"] + [f"<bench>_{i}" for i in range(1, n_vectors)]
        self.tok.add_tokens(names)
        ids = self.tok.convert_tokens_to_ids(names)
        self.te.resize_token_embeddings(len(self.tok), mean_resizing=False)
        table = self.te.get_input_embeddings().weight
        init_id = self.tok.convert_tokens_to_ids("*")
        with torch.no_grad():
            table[ids] = table[init_id].clone()
        self.vae.requires_grad_(False)
        self.unet.requires_grad_(False)
        self.te.requires_grad_(False)
        self.te.get_input_embeddings().requires_grad_(True)
        self.te.train()
        self.opt = torch.optim.AdamW(self.te.get_input_embeddings().parameters(), lr=5e-4, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)
        self.orig = table.detach().clone()
        self.keep = torch.ones(len(self.tok), dtype=torch.bool, device=device)
        self.keep[min(ids) : max(ids) + 1] = False
        self.sched = DDPMScheduler.from_config(pipe.scheduler.config)
        self.prompt = "a photo of a " + " ".join(names)
        self.gen = torch.Generator().manual_seed(seed)
        self.rng = np.random.default_rng(seed)
        self.scale = float(self.vae.config.scaling_factor)

    def _pixels(self) -> Any:
        from PIL import Image

        torch = self.torch
        out = []
        for _ in range(self.batch):
            path = self.pictures[int(self.rng.integers(len(self.pictures)))]
            img = Image.open(path).convert("RGB").resize((self.size, self.size), Image.Resampling.BICUBIC)
            if self.rng.random() < 0.5:
                img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            arr = (np.asarray(img, np.float32) / 127.5 - 1.0).transpose(2, 0, 1)
            out.append(torch.from_numpy(arr))
        return torch.stack(out).to(self.device)

    def step(self) -> float:
        torch = self.torch
        pixels = self._pixels()
        ids = self.tok([self.prompt] * self.batch, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids.to(self.device)
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
            latents = self.vae.encode(pixels.to(self.vae.dtype)).latent_dist.sample().detach() * self.scale
            noise = torch.randn(latents.shape, generator=self.gen).to(self.device, latents.dtype)
            t = torch.randint(0, self.sched.config.num_train_timesteps, (self.batch,), generator=self.gen).to(self.device)
            noisy = self.sched.add_noise(latents, noise, t)
            ehs = self.te(ids)[0].to(self.unet.dtype)
            pred = self.unet(noisy.to(self.unet.dtype), t, ehs).sample
        loss = torch.nn.functional.mse_loss(pred.float(), noise.float())
        loss.backward()
        self.opt.step()
        self.opt.zero_grad()
        with torch.no_grad():
            table = self.te.get_input_embeddings().weight
            table[self.keep] = self.orig[self.keep]
        return float(loss.detach())


def sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def tihub_round(pipe: Any, model_dir: Path, pics: Path, work: Path, steps: int, n_vectors: int, batch: int, size: int, device: Any, precision: str) -> list[float]:
    """Per-step seconds of one tihub training run (setup and latent caching excluded)."""
    from tihub.engine.train import TrainConfig, train

    stamps: list[float] = []

    def progress(info: dict) -> None:  # type: ignore[type-arg]
        sync(device)
        stamps.append(time.perf_counter())

    cfg = TrainConfig(
        name="bench", images=pics, model=str(model_dir), embeddings_dir=work / "emb", run_dir=work / "run",
        vectors=n_vectors, steps=steps + 1, lr="5e-4", batch_size=batch, size=(size, size), save_every=0,
        template="subject", overwrite=True, device=str(device), precision=precision, model_hash="bench",
    )
    train(cfg, log=lambda _: None, progress=progress, pipe=pipe)
    return [b - a for a, b in zip(stamps, stamps[1:])]


def peer_round(loop: DiffusersExampleLoop, steps: int, device: Any) -> list[float]:
    times = []
    loop.step()  # warm-up
    sync(device)
    for _ in range(steps):
        t = time.perf_counter()
        loop.step()
        sync(device)
        times.append(time.perf_counter() - t)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer rounds and steps, a 256-wide text encoder")
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--vectors", type=int, default=4)
    ap.add_argument("--width", type=int, default=None, help="text-encoder width (768 = SD1.5)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    rounds = args.rounds or (3 if args.quick else 6)
    steps = args.steps or (6 if args.quick else 12)
    width = args.width or (256 if args.quick else 768)

    import torch

    torch.set_num_threads(args.threads)
    from tihub.engine.tiny import tiny_sd1_pipeline

    device = torch.device(args.device)
    size = 64
    print(f"tihub train vs diffusers example loop: tiny UNet/VAE, text encoder {width} wide, batch {args.batch_size}, {args.vectors} vectors, {size}x{size}, fp32, {device}, {args.threads} thread(s)")
    print(f"torch {torch.__version__}; {rounds} interleaved rounds x {steps} steps")
    with tempfile.TemporaryDirectory(prefix="tihub-bench-train-") as tmp:
        work = Path(tmp)
        pipe = tiny_sd1_pipeline(text_width=width).to(device)
        model_dir = work / "model"
        model_dir.mkdir()  # the trainer is handed the pipeline; the folder only names it
        pics = work / "pics"
        pictures = make_pictures(pics, 4, size)
        peer = DiffusersExampleLoop(pipe, pictures, args.vectors, args.batch_size, size, device, torch.float32)
        ours: list[float] = []
        theirs: list[float] = []
        for r in range(rounds):
            a = tihub_round(pipe, model_dir, pics, work, steps, args.vectors, args.batch_size, size, device, "fp32")
            b = peer_round(peer, steps, device)
            ours.append(statistics.median(a))
            theirs.append(statistics.median(b))
            print(f"  round {r + 1}: tihub {1 / ours[-1]:7.2f} steps/s   peer {1 / theirs[-1]:7.2f} steps/s")
    mo, mt = statistics.median(ours), statistics.median(theirs)
    print(f"median step: tihub {mo * 1000:.1f} ms ({1 / mo:.2f} steps/s), diffusers-example loop {mt * 1000:.1f} ms ({1 / mt:.2f} steps/s)")
    print(f"ratio (tihub speed / peer speed): {mt / mo:.2f}x  (target >= 2x on CPU)")


if __name__ == "__main__":
    main()
