"""The UNet call replayed from a captured graph gives exactly the eager output.

CUDA graphs need a GPU; the CPU tests run GraphedUNet in its emulation mode (the UNet re-run on
the static buffers, its output written into the captured output tensor), which checks the data
flow a real replay depends on: inputs copied into buffers keyed by shape, outputs handed back
as copies, Python timesteps made tensors, the self-check, and the eager fallbacks."""

from __future__ import annotations

from typing import Any

import pytest

torch = pytest.importorskip("torch")

from tihub.engine import unet_graph  # noqa: E402
from tihub.engine.unet_graph import EagerUNet, GraphedUNet, replayed_unet, unet_runner  # noqa: E402


@pytest.fixture(scope="module")
def sd1() -> Any:
    from tihub.engine.tiny import tiny_sd1_pipeline

    pipe = tiny_sd1_pipeline()
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def sdxl() -> Any:
    from tihub.engine.tiny import tiny_sdxl_pipeline

    pipe = tiny_sdxl_pipeline()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _inputs(seed: int, batch: int = 2, side: int = 8, width: int = 32) -> tuple[Any, Any, Any]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 4, side, side, generator=g), torch.tensor(float(50 + 97 * seed)), torch.randn(batch, 77, width, generator=g)


def _eager(unet: Any, x: Any, t: Any, ehs: Any, **kw: Any) -> Any:
    with torch.no_grad():
        return unet(x, t, encoder_hidden_states=ehs, **kw).sample


def test_replays_equal_eager_calls_and_outputs_are_the_callers(sd1: Any) -> None:
    runner = GraphedUNet(sd1.unet, emulate=True)
    outs = []
    with torch.no_grad():
        for seed in range(4):
            x, t, ehs = _inputs(seed)
            out = runner(x, t, ehs)
            assert torch.equal(out, _eager(sd1.unet, x, t, ehs))
            outs.append((out, out.clone()))
    # one capture, four replays; the second replay was checked against one eager call
    assert (runner.captures, runner.replays, runner.eager_calls) == (1, 4, 1) and runner.replaying
    # each output is the caller's: later replays did not overwrite it
    assert all(torch.equal(a, b) for a, b in outs)
    # the buffers follow the inputs copied in, not the first call's tensors
    entry = next(iter(runner.graphs.values()))
    static = unet_graph._fill(entry.template, entry.static)
    assert torch.equal(static["latents"], _inputs(3)[0]) and torch.equal(static["encoder_hidden_states"], _inputs(3)[2])


def test_buffers_are_keyed_by_shape_dtype_and_the_non_tensor_arguments(sd1: Any) -> None:
    runner = GraphedUNet(sd1.unet, emulate=True)
    with torch.no_grad():
        x, t, ehs = _inputs(0)
        runner(x, t, ehs)
        runner(x * 2, t, ehs)  # the same shapes: a replay
        x4, _, ehs4 = _inputs(1, batch=4)
        runner(x4, t, ehs4)  # another batch: a second graph
        x16, _, ehs1 = _inputs(2, side=16)
        out = runner(x16, t, ehs1)  # another size: a third graph
        assert torch.equal(out, _eager(sd1.unet, x16, t, ehs1))
        runner(x, 500, ehs)  # a Python timestep: an int64 tensor, a fourth graph
        assert torch.equal(runner(x, 700, ehs), _eager(sd1.unet, x, torch.tensor(700), ehs))
    assert runner.captures == 4 and len(runner.graphs) == 4
    # a non-tensor argument is part of the key (its value is baked into the graph)
    key = runner._normalise(x, t, ehs, {}).key
    assert runner._normalise(x, t, ehs, {"cross_attention_kwargs": {"scale": 0.5}}).key != key
    assert runner._normalise(x.double(), t, ehs, {}).key != key
    assert runner._normalise(x + 1, t + 1, ehs * 3, {}).key == key
    # beyond MAX_GRAPHS shapes run eagerly, quietly, and the graphs already made keep replaying
    before = runner.replays
    with torch.no_grad():
        x8, _, ehs8 = _inputs(3, batch=8)
        assert torch.equal(runner(x8, t, ehs8), _eager(sd1.unet, x8, t, ehs8))
        runner(x, t, ehs)
    assert runner.captures == 4 and runner.replays == before + 1 and not runner.dropped


def test_sdxl_added_conditioning_is_copied_in_too(sdxl: Any) -> None:
    runner = GraphedUNet(sdxl.unet, emulate=True)
    with torch.no_grad():
        for seed in range(3):
            x, t, _ = _inputs(seed)
            g = torch.Generator().manual_seed(100 + seed)
            ehs = torch.randn(2, 77, 64, generator=g)
            added = {"text_embeds": torch.randn(2, 32, generator=g), "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]] * 2) * (seed + 1)}
            out = runner(x, t, ehs, added_cond_kwargs=added)
            assert torch.equal(out, _eager(sdxl.unet, x, t, ehs, added_cond_kwargs=added))
    assert (runner.captures, runner.replays) == (1, 3)


def test_a_failed_capture_is_a_note_and_calls_go_on_eagerly(sd1: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(self, call):  # type: ignore[no-untyped-def]
        raise RuntimeError("operation not permitted when stream is capturing\nmore")

    monkeypatch.setattr(GraphedUNet, "_capture", refuse)
    notes: list[str] = []
    runner = GraphedUNet(sd1.unet, emulate=True, on_fallback=notes.append)
    with torch.no_grad():
        for seed in range(3):
            x, t, ehs = _inputs(seed)
            assert torch.equal(runner(x, t, ehs), _eager(sd1.unet, x, t, ehs))
    assert notes == ["The CUDA graph capture of the UNet failed (RuntimeError: operation not permitted when stream is capturing); generation runs eagerly."]
    assert runner.eager_calls == 3 and runner.replays == 0 and not runner.replaying


def test_a_replay_that_differs_from_eager_is_caught_once_and_calls_go_on_eagerly(sd1: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # a broken graph: it keeps replaying the captured inputs instead of loading the new ones
    monkeypatch.setattr(GraphedUNet, "_load", lambda self, entry, call: None)
    notes: list[str] = []
    runner = GraphedUNet(sd1.unet, emulate=True, on_fallback=notes.append)
    with torch.no_grad():
        for seed in range(4):
            x, t, ehs = _inputs(seed)
            # the caller never sees the wrong replay: the checked call returns the eager output
            assert torch.equal(runner(x, t, ehs), _eager(sd1.unet, x, t, ehs))
    assert len(notes) == 1 and notes[0].startswith("The CUDA graph replay of the UNet differed from an eager call by ")
    assert notes[0].endswith("; generation runs eagerly.")
    assert runner.dropped and not runner.replaying and runner.graphs == {}
    assert (runner.replays, runner.eager_calls) == (2, 3)  # the second replay checked, then eager


def test_the_runner_for_each_mode(sd1: Any) -> None:
    notes: list[str] = []
    assert type(unet_runner(sd1.unet, "cpu", "auto", notes.append)) is EagerUNet
    assert type(unet_runner(sd1.unet, "cuda", "auto", notes.append)) is GraphedUNet
    assert type(unet_runner(sd1.unet, "cuda", "off", notes.append)) is EagerUNet
    assert notes == []
    assert type(unet_runner(sd1.unet, "cpu", "on", notes.append)) is EagerUNet
    assert notes == ["CUDA graphs need a CUDA device, not cpu; generation runs eagerly."]
    emulated = unet_runner(sd1.unet, "cpu", "emulate")
    assert type(emulated) is GraphedUNet and emulated.emulate  # type: ignore[attr-defined]
    with pytest.raises(ValueError):
        unet_runner(sd1.unet, "cpu", "sometimes")
    x, t, ehs = _inputs(0)
    with torch.no_grad():
        assert torch.equal(EagerUNet(sd1.unet)(x, t, ehs, return_dict=True), _eager(sd1.unet, x, t, ehs))


@pytest.mark.parametrize("which", ["sd1", "sdxl"])
def test_a_pipeline_call_through_replayed_unet_gives_the_same_pictures(which: str, request: pytest.FixtureRequest) -> None:
    import numpy as np

    pipe = request.getfixturevalue(which)

    def images() -> list[Any]:
        g = [torch.Generator().manual_seed(s) for s in (1, 2)]
        return pipe(["a fox", "a red fox"], negative_prompt=["", "blur"], num_inference_steps=4, guidance_scale=6.0, height=64, width=64, generator=g, output_type="np").images

    plain = images()
    notes: list[str] = []
    with replayed_unet(pipe, "emulate", notes.append) as runner:
        with torch.inference_mode():
            graphed = images()
    assert np.array_equal(plain, graphed) and notes == []
    assert runner.captures == 1 and runner.replays == 4  # type: ignore[attr-defined]
    # the UNet is given back as it was
    assert "forward" not in vars(pipe.unet)
    assert np.array_equal(images(), plain)


def test_the_unet_call_makes_no_host_sync(sd1: Any) -> None:
    """A capture forbids host syncs; the UNet call with a 0-d timestep tensor makes none."""
    from test_train_graphs import _NoHostSync

    x, t, ehs = _inputs(0)
    mode = _NoHostSync()
    with torch.no_grad(), mode:
        sd1.unet(x, t, encoder_hidden_states=ehs, return_dict=False)
    assert mode.hits == []
