"""Training steps replayed from a captured graph give exactly the eager result.

CUDA graphs need a GPU; the CPU tests run GraphedStep in its emulation mode (the captured function
re-run on the static buffers, results written into the captured output tensors), which checks the
data flow a real replay depends on: inputs copied in, gradients read out before the next replay,
micro-batches summed, odd-sized batches sent to the eager step. A second test checks that the
step makes no host sync, which a CUDA graph capture forbids."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch")

from engine_helpers import quiet as _quiet, train_cfg as _cfg, train_pictures as _pictures  # noqa: E402

from tihub.engine import train_step  # noqa: E402
from tihub.engine.train import PLACEHOLDER, Session, train  # noqa: E402
from tihub.engine.train_step import GraphedStep  # noqa: E402


def _vectors(result) -> dict[str, torch.Tensor]:  # type: ignore[no-untyped-def]
    from safetensors.torch import load_file

    return load_file(str(result.output))


@pytest.fixture
def replays(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts graph replays and eager fallbacks of the emulated GraphedStep."""
    counts = [0, 0]
    real_replay, real_eager = GraphedStep._replay, train_step.EagerStep.__call__

    def replay(self):  # type: ignore[no-untyped-def]
        counts[0] += 1
        return real_replay(self)

    def eager(self, mb):  # type: ignore[no-untyped-def]
        counts[1] += 1
        return real_eager(self, mb)

    monkeypatch.setattr(GraphedStep, "_replay", replay)
    monkeypatch.setattr(train_step.EagerStep, "__call__", eager)
    return counts


@pytest.mark.parametrize("which", ["sd1", "sdxl"])
def test_emulated_graph_replays_match_eager_steps_exactly(which: str, tmp_path: Path, request: pytest.FixtureRequest, replays: list[int]) -> None:
    model = request.getfixturevalue(f"tiny_{which}_dir")
    # 5 pictures with flips, batch 2: each epoch has 5 full batches of 2; grad-accum 2; random
    # latent sampling, shuffled tags and dropout: every input changes every micro-batch
    kw = dict(steps=6, batch_size=2, grad_accum=2, flip=True, latent_sampling="random", shuffle_tags=True, tag_dropout=0.3, clip_grad="norm:0.5", images=_pictures(tmp_path / "pics", n=5))
    eager = train(_cfg(tmp_path / "eager", model, **kw), log=_quiet)
    assert replays == [0, 6 * 2]
    replays[:] = [0, 0]
    lines: list[str] = []
    graphed = train(_cfg(tmp_path / "graphed", model, cuda_graphs="emulate", **kw), log=lines.append)
    # every micro-batch was a replay; one eager step checked the second replay
    assert replays == [6 * 2, 1] and graphed.notes == [] and not any("eagerly" in x for x in lines)
    assert (eager.steps_from, graphed.steps_from) == ("eager", "cuda graph")
    a, b = _vectors(eager), _vectors(graphed)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert eager.loss_csv.read_text() == graphed.loss_csv.read_text()


def test_batches_of_another_shape_run_eagerly_between_replays(tmp_path: Path, tiny_sd1_dir: Path, replays: list[int]) -> None:
    # no resize: pictures of two sizes make batches of two shapes; one is captured, the other eager
    pics = tmp_path / "pics"
    pics.mkdir()
    for i, (w, h) in enumerate([(64, 64), (64, 64), (80, 64), (80, 64)]):
        arr = np.random.default_rng(i).integers(0, 255, (h, w, 4), dtype=np.uint8)
        Image.fromarray(arr, "RGBA").save(pics / f"{i}-fox.png")
    kw = dict(steps=8, batch_size=2, images=pics, size=None, alpha_as_loss_weight=True)
    eager = train(_cfg(tmp_path / "eager", tiny_sd1_dir, **kw), log=_quiet)
    replays[:] = [0, 0]
    graphed = train(_cfg(tmp_path / "graphed", tiny_sd1_dir, cuda_graphs="emulate", **kw), log=_quiet)
    assert replays[0] >= 2 and replays[1] >= 2 and sum(replays) == 8 + 1, replays  # + the self-check
    a, b = _vectors(eager), _vectors(graphed)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_cuda_graphs_on_cpu_is_a_note_and_an_eager_run(tmp_path: Path, tiny_sd1_dir: Path, replays: list[int]) -> None:
    lines: list[str] = []
    result = train(_cfg(tmp_path, tiny_sd1_dir, cuda_graphs="on"), log=lines.append)
    assert "CUDA graphs need a CUDA device, not cpu; training runs eagerly." in lines
    assert result.notes == ["CUDA graphs need a CUDA device, not cpu; training runs eagerly."]
    assert replays[0] == 0


def test_the_step_runner_for_each_mode() -> None:
    from tihub.engine.train_step import EagerStep, make_step

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    scaler = object()

    def pick(mode: str, device=cuda, scaler=None, checkpointing=False, compiled=False):  # type: ignore[no-untyped-def]
        notes: list[str] = []
        step = make_step(mode, None, 1.0, 2, device, scaler, checkpointing, compiled, notes.append)
        return type(step), getattr(step, "emulate", None), notes

    # auto (the default): a graph wherever one can run, silently eager elsewhere
    assert pick("auto") == (GraphedStep, False, [])
    assert pick("auto", device=cpu) == (EagerStep, None, [])
    assert pick("auto", scaler=scaler) == (GraphedStep, False, [])  # fp16: the scale read in the graph
    assert pick("auto", checkpointing=True) == (EagerStep, None, [])
    assert pick("auto", compiled=True) == (EagerStep, None, [])
    # on: the same choice, with a note where a graph cannot run
    assert pick("on") == (GraphedStep, False, [])
    assert pick("on", device=cpu) == (EagerStep, None, ["CUDA graphs need a CUDA device, not cpu; training runs eagerly."])
    assert pick("on", scaler=scaler) == (GraphedStep, False, [])
    assert pick("off") == (EagerStep, None, [])
    assert pick("emulate", device=cpu) == (GraphedStep, True, [])
    # both runners keep the fp16 loss scaler (the graph's self-check runs an eager step with it)
    assert make_step("auto", None, 1.0, 2, cuda, scaler, False, False, print).scaler is scaler
    assert make_step("auto", None, 1.0, 2, cuda, scaler, True, False, print).scaler is scaler
    assert make_step("auto", None, 1.0, 2, cuda, scaler, False, False, print).eager.scaler is scaler  # type: ignore[union-attr]


def test_cuda_graphs_refusals() -> None:
    from tihub.engine.train_step import graphs_refusal

    cuda = torch.device("cuda")
    assert graphs_refusal(cuda, False, False) is None
    assert "--gradient-checkpointing" in (graphs_refusal(cuda, True, False) or "")
    assert "--compile" in (graphs_refusal(cuda, False, True) or "")


class _NoHostSync(torch.overrides.TorchFunctionMode):
    """Records Python-level operations that would make the CPU wait for the device."""

    SYNC = {"__bool__", "item", "tolist", "nonzero", "__int__", "__float__", "__index__", "cpu", "numpy", "masked_select", "unique", "argwhere"}

    def __init__(self) -> None:
        super().__init__()
        self.hits: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        name = getattr(func, "__name__", str(func))
        if name in self.SYNC:
            self.hits.append(name)
        if name == "__getitem__" and len(args) > 1:
            index = args[1] if isinstance(args[1], tuple) else (args[1],)
            if any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in index):
                self.hits.append("boolean indexing")
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("which", ["sd1", "sdxl"])
def test_the_step_makes_no_host_sync(which: str, request: pytest.FixtureRequest) -> None:
    from tihub.engine.train import load_pipeline

    pipe = load_pipeline(str(request.getfixturevalue(f"tiny_{which}_dir")), torch.device("cpu"), torch.float32)
    session = Session(pipe, 2, torch.device("cpu"), torch.float32, lambda tok, table, key: np.zeros((2, table.shape[1]), np.float32))
    try:
        g = torch.Generator().manual_seed(0)
        latents, noise = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
        t = torch.tensor([10, 900])
        ids = session.token_ids([f"a photo of {PLACEHOLDER}", f"{PLACEHOLDER}, snow"])
        times = session.time_tensor(2)
        weight = torch.ones(2, 1, 8, 8)
        mode = _NoHostSync()
        with mode:
            loss = session.loss_from(latents, noise, t, ids, times, weight)
            loss.backward()
        assert mode.hits == []
        assert all(p.grad is not None for p in session.params)
        # the check itself works: reading the loss back is a sync
        with mode:
            float(loss)
        assert mode.hits
    finally:
        session.close()


def test_emulated_capture_reads_only_its_own_buffers(tmp_path: Path, tiny_sd1_dir: Path) -> None:
    """After capture, replays follow the inputs copied in, not the tensors of the first batch."""
    from tihub.engine.train import load_pipeline
    from tihub.engine.train_step import EagerStep, MicroBatch

    pipe = load_pipeline(str(tiny_sd1_dir), torch.device("cpu"), torch.float32)
    session = Session(pipe, 2, torch.device("cpu"), torch.float32, lambda tok, table, key: np.full((2, table.shape[1]), 0.01, np.float32))
    try:
        def batch(seed: int, prompt: str) -> MicroBatch:
            g = torch.Generator().manual_seed(seed)
            return MicroBatch(torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g), torch.randint(0, 1000, (2,), generator=g), session.token_ids([prompt, prompt]))

        graphed, eager = GraphedStep(session, 0.5, 2, emulate=True), EagerStep(session, 0.5)
        first = batch(1, f"a photo of {PLACEHOLDER}")
        graphed(first)
        for seed, prompt in ((2, f"{PLACEHOLDER} in snow"), (3, f"a red {PLACEHOLDER}")):
            mb = batch(seed, prompt)
            gl, gg = graphed(mb)
            gl, gg = gl.clone(), [x.clone() for x in gg]
            el, eg = eager(mb)
            assert torch.equal(gl, el) and all(torch.equal(a, b) for a, b in zip(gg, eg))
        # mutating the first batch's tensors after capture changes nothing
        first.latents.mul_(100)
        assert graphed.static is not None and not torch.equal(graphed.static.latents, first.latents)
    finally:
        session.close()


def test_a_failed_capture_is_a_note_and_the_run_goes_on_eagerly(tmp_path: Path, tiny_sd1_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(self, mb):  # type: ignore[no-untyped-def]
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(GraphedStep, "_capture", refuse)
    eager = train(_cfg(tmp_path / "eager", tiny_sd1_dir), log=_quiet)
    lines: list[str] = []
    graphed = train(_cfg(tmp_path / "graphed", tiny_sd1_dir, cuda_graphs="emulate"), log=lines.append)
    note = "The CUDA graph capture failed (RuntimeError: operation not permitted when stream is capturing); training runs eagerly."
    assert note in lines and graphed.notes == [note]
    assert graphed.steps_from == "eager"
    a, b = _vectors(eager), _vectors(graphed)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_replay_that_differs_from_eager_is_caught_once_and_the_run_goes_on_eagerly(tmp_path: Path, tiny_sd1_dir: Path, monkeypatch: pytest.MonkeyPatch, replays: list[int]) -> None:
    # a broken graph: it keeps replaying the captured batch instead of loading the new one
    monkeypatch.setattr(GraphedStep, "_load", lambda self, mb: None)
    kw = dict(steps=6, batch_size=2, flip=True, latent_sampling="random")
    eager = train(_cfg(tmp_path / "eager", tiny_sd1_dir, **kw), log=_quiet)
    replays[:] = [0, 0]
    lines: list[str] = []
    graphed = train(_cfg(tmp_path / "graphed", tiny_sd1_dir, cuda_graphs="emulate", **kw), log=lines.append)
    assert len(graphed.notes) == 1 and graphed.notes[0].startswith("The CUDA graph replay differed from an eager step by ")
    assert graphed.notes[0].endswith("; training runs eagerly.") and graphed.notes[0] in lines
    assert graphed.steps_from == "eager"
    assert replays == [2, 1 + 4]  # two replays (the second checked), then eager steps only
    a, b = _vectors(eager), _vectors(graphed)
    assert all(torch.equal(a[k], b[k]) for k in a)  # the wrong replay never reached the optimizer


def _scaled_run(model: Path, graphed: bool, steps: int = 6) -> tuple[list[torch.Tensor], list[float], list[bool], list[str]]:
    """fp16-style training with a GradScaler (on the CPU: fp32 compute, a real CPU GradScaler),
    each step as train.py takes it: the micro-batch runner, then unscale_, step and update.
    Returns the vectors after each step, the scale before each step, whether each step's
    gradients were finite, and the runner's notes."""
    from tihub.engine.train import load_pipeline
    from tihub.engine.train_step import EagerStep, MicroBatch

    pipe = load_pipeline(str(model), torch.device("cpu"), torch.float32)
    session = Session(pipe, 2, torch.device("cpu"), torch.float32, lambda tok, table, key: np.full((2, table.shape[1]), 0.01, np.float32))
    # a first scale so large that the gradients overflow (a skipped step, as fp16 runs start),
    # then a backoff to a sane scale, and growth every 2 good steps: the scale moves every step
    # (the loss weighed 1e4 and a first scale of 3e38: the scaled loss is inf)
    scaler = torch.amp.GradScaler("cpu", init_scale=3e38, backoff_factor=1e-30, growth_factor=2.0, growth_interval=2)
    notes: list[str] = []
    run = GraphedStep(session, 1e4, 2, emulate=True, on_fallback=notes.append, scaler=scaler) if graphed else EagerStep(session, 1e4, scaler)
    optimizer = torch.optim.AdamW(session.params, lr=0.05, weight_decay=0.0)
    vectors, scales, finite = [], [], []
    try:
        for step in range(steps):
            g = torch.Generator().manual_seed(step)
            prompt = [f"a photo of {PLACEHOLDER}", f"{PLACEHOLDER} in snow"][step % 2]
            mb = MicroBatch(torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g), torch.randint(0, 1000, (2,), generator=g), session.token_ids([prompt, prompt]))
            scales.append(float(scaler.get_scale()))
            _loss, grads = run(mb)
            finite.append(all(bool(x.isfinite().all()) for x in grads))
            for p, g_ in zip(session.params, grads, strict=True):
                p.grad = g_
            scaler.unscale_(optimizer)
            scaler.step(optimizer)
            scaler.update()
            vectors.append(torch.cat([p.detach().clone().flatten() for p in session.params]))
    finally:
        session.close()
    return vectors, scales, finite, notes


def test_fp16_loss_scaling_replays_match_eager_steps_with_the_same_skips_and_scales(tiny_sd1_dir: Path, replays: list[int]) -> None:
    eager_vectors, eager_scales, eager_finite, _ = _scaled_run(tiny_sd1_dir, graphed=False)
    replays[:] = [0, 0]
    graph_vectors, graph_scales, graph_finite, notes = _scaled_run(tiny_sd1_dir, graphed=True)
    # every step replayed (the second one also checked against an eager step), none dropped
    assert replays == [6, 1] and notes == []
    # the first step overflowed and was skipped in both; the scale then moved every other step,
    # and each replay used the scale in force at its step, not the one at capture
    assert eager_finite[0] is False and all(eager_finite[1:])
    assert graph_finite == eager_finite and graph_scales == eager_scales
    assert len(set(eager_scales)) >= 3, eager_scales
    assert torch.equal(eager_vectors[0], torch.full_like(eager_vectors[0], 0.01))  # skipped: unchanged
    assert all(torch.equal(a, b) for a, b in zip(eager_vectors, graph_vectors, strict=True))


def test_the_scaled_step_makes_no_host_sync(tiny_sd1_dir: Path) -> None:
    """The scale is read as a device tensor inside the captured work: never as a Python number."""
    from tihub.engine.train import load_pipeline
    from tihub.engine.train_step import MicroBatch

    pipe = load_pipeline(str(tiny_sd1_dir), torch.device("cpu"), torch.float32)
    session = Session(pipe, 2, torch.device("cpu"), torch.float32, lambda tok, table, key: np.zeros((2, table.shape[1]), np.float32))
    try:
        scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
        step = GraphedStep(session, 1.0, 2, emulate=True, scaler=scaler)
        g = torch.Generator().manual_seed(0)
        mb = MicroBatch(torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g), torch.tensor([3, 700]), session.token_ids([PLACEHOLDER, PLACEHOLDER]))
        step(mb)  # the capture: the scale tensor made, the buffers copied
        mode = _NoHostSync()
        with mode:
            step._body()
        assert mode.hits == []
    finally:
        session.close()


def test_the_self_check_compares_overflows_by_where_they_are() -> None:
    from tihub.engine.train_step import relative_difference

    inf, nan = float("inf"), float("nan")
    a = torch.tensor([1.0, inf, 3.0])
    assert relative_difference([a], [torch.tensor([1.0, inf, 3.0])]) == 0.0
    assert relative_difference([a], [torch.tensor([1.0, nan, 3.0])]) == 0.0  # both not finite there
    assert relative_difference([a], [torch.tensor([1.0, 2.0, 3.0])]) == inf  # an overflow in one only
    assert 0.1 < relative_difference([torch.tensor([1.0, 2.0])], [torch.tensor([1.0, 2.5])]) < 0.2
