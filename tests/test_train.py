"""The training engine on tiny SD1- and SDXL-shaped pipelines."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch")

from engine_helpers import quiet as _quiet, train_cfg as _cfg, train_pictures as _pictures  # noqa: E402

from tihub.engine.train import Session, load_pipeline, train  # noqa: E402
from tihub.errors import ConfigError  # noqa: E402


def _snapshot(pipe) -> dict[str, torch.Tensor]:  # type: ignore[no-untyped-def]
    out = {}
    for comp in ("unet", "vae", "text_encoder", "text_encoder_2"):
        m = getattr(pipe, comp, None)
        if m is not None:
            out.update({f"{comp}.{k}": v.detach().clone() for k, v in m.state_dict().items()})
    return out


@pytest.mark.parametrize("which", ["sd1", "sdxl"])
def test_only_the_new_vectors_change(which: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    model = request.getfixturevalue(f"tiny_{which}_dir")
    pipe = load_pipeline(str(model), torch.device("cpu"), torch.float32)
    before = _snapshot(pipe)
    embs = [pipe.text_encoder.get_input_embeddings()] + ([pipe.text_encoder_2.get_input_embeddings()] if which == "sdxl" else [])
    init = {}
    for key, emb in zip(["clip_l", "clip_g"], embs):
        init[key] = emb.weight[265].detach().clone()  # "*" is CLIP token 265
    result = train(_cfg(tmp_path, model, flip=True), log=_quiet, pipe=pipe)
    # the pipeline is given back untouched: same modules, every weight bit-identical
    after = _snapshot(pipe)
    assert after.keys() == before.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert pipe.text_encoder.get_input_embeddings() is embs[0]
    assert all(p.grad is None for p in pipe.unet.parameters())
    # the new vectors moved away from their starting point ("*" in every slot)
    from safetensors.torch import load_file

    saved = load_file(str(result.output))
    keys = ["clip_l", "clip_g"] if which == "sdxl" else ["emb_params"]
    assert sorted(saved) == sorted(keys)
    for key in keys:
        vec = saved[key]
        assert vec.shape == (2, 32) and vec.dtype == torch.float32
        start = init["clip_g" if key == "clip_g" else "clip_l"]
        assert not torch.allclose(vec[0], start)
    assert result.pictures == "3 pictures (6 with flips)"


@pytest.mark.parametrize("which", ["sd1", "sdxl"])
def test_loss_on_a_fixed_batch_goes_down(which: str, request: pytest.FixtureRequest) -> None:
    model = request.getfixturevalue(f"tiny_{which}_dir")
    pipe = load_pipeline(str(model), torch.device("cpu"), torch.float32)
    session = Session(pipe, 2, torch.device("cpu"), torch.float32, lambda tok, table, key: table[[265, 265]].detach().numpy())
    try:
        g = torch.Generator().manual_seed(1)
        latents = torch.randn((2, 4, 8, 8), generator=g)
        noise = torch.randn((2, 4, 8, 8), generator=g)
        t = torch.tensor([500, 500])
        prompts = ["a photo of a [name]", "[name] on a table"]
        opt = torch.optim.AdamW(session.params, lr=1e-2, weight_decay=0.0)
        losses = []
        for _ in range(15):
            opt.zero_grad()
            loss = session.loss(latents, noise, t, prompts)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        assert all(b < a for a, b in zip(losses, losses[1:])), losses
    finally:
        session.restore()


def test_outputs_load_in_a1111_layout_diffusers_and_tihub(tmp_path: Path, tiny_sd1_dir: Path) -> None:
    from diffusers import StableDiffusionPipeline

    from tihub.hashing import model_hashes

    result = train(_cfg(tmp_path, tiny_sd1_dir, also_pt=True), log=_quiet)
    pt = result.extra_outputs[0]
    data = torch.load(pt, weights_only=True)
    vec = data["string_to_param"]["*"]
    assert vec.shape == (2, 32)
    assert data["name"] == "foxtok" and data["step"] == 6
    assert data["sd_checkpoint"] == model_hashes(tiny_sd1_dir).autov2
    assert data["sd_checkpoint_name"] == tiny_sd1_dir.name
    for path in (pt, result.output):
        pipe = StableDiffusionPipeline.from_pretrained(str(tiny_sd1_dir), safety_checker=None, requires_safety_checker=False)
        pipe.load_textual_inversion(str(path), token="foxtok")
        ids = pipe.tokenizer.convert_tokens_to_ids(["foxtok", "foxtok_1"])
        rows = pipe.text_encoder.get_input_embeddings().weight[ids]
        assert torch.equal(rows, vec)


def test_output_reads_back_in_tihub_reader(tmp_path: Path) -> None:
    """tihub's reader knows real CLIP widths only, so this run uses a 768-wide text encoder."""
    from tihub.engine.tiny import tiny_sd1_pipeline
    from tihub.formats import read_embedding

    pipe = tiny_sd1_pipeline(text_width=768)
    model = tmp_path / "sd1-768"
    pipe.save_pretrained(model)
    result = train(_cfg(tmp_path, model, steps=2, also_pt=True, png_card=True), log=_quiet, pipe=pipe)
    for path in [result.output, *result.extra_outputs]:
        emb = read_embedding(path)
        assert emb.vector_count == 2 and emb.widths == {"clip_l": 768}, path
        assert emb.step == 2 and emb.sd_checkpoint == result.sd_checkpoint and emb.sd_checkpoint
    assert {p.suffix for p in result.extra_outputs} == {".pt", ".png"}


def test_sdxl_output_loads_in_diffusers_both_encoders(tmp_path: Path, tiny_sdxl_dir: Path) -> None:
    from diffusers import StableDiffusionXLPipeline
    from safetensors.torch import load_file

    lines: list[str] = []
    result = train(_cfg(tmp_path, tiny_sdxl_dir, also_pt=True), log=lines.append)
    # an A1111 .pt holds one encoder: asked for on SDXL, it is one note (logged and in the result)
    note = "No .pt written: A1111 .pt files hold one text encoder; SDXL embeddings are .safetensors (clip_l + clip_g)."
    assert result.notes == [note] and note in lines and result.extra_outputs == []
    sd = load_file(str(result.output))
    pipe = StableDiffusionXLPipeline.from_pretrained(str(tiny_sdxl_dir))
    pipe.load_textual_inversion(sd["clip_l"], token="foxtok", text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer)
    pipe.load_textual_inversion(sd["clip_g"], token="foxtok", text_encoder=pipe.text_encoder_2, tokenizer=pipe.tokenizer_2)
    ids = pipe.tokenizer_2.convert_tokens_to_ids(["foxtok", "foxtok_1"])
    assert torch.equal(pipe.text_encoder_2.get_input_embeddings().weight[ids], sd["clip_g"])


def test_sd2_shaped_training(tmp_path: Path) -> None:
    """SD2: a 1024-wide OpenCLIP-H text encoder whose tokenizer pads with "!", and v-prediction."""
    from diffusers import StableDiffusionPipeline
    from safetensors.torch import load_file

    from tihub.engine.models import family_of
    from tihub.engine.tiny import tiny_sd2_pipeline
    from tihub.formats import read_embedding

    pipe = tiny_sd2_pipeline()
    assert family_of(pipe) == "sd2" and pipe.tokenizer.pad_token_id == 0
    model = tmp_path / "sd2"
    pipe.save_pretrained(model)
    # the training prompts are tokenized as diffusers tokenizes them: padded with "!", not <eos>
    session = Session(pipe, 2, torch.device("cpu"), torch.float32, lambda tok, table, key: table[[265, 265]].detach().numpy())
    try:
        got = session.token_ids(["a photo of a fox"])[0][0].tolist()
    finally:
        session.restore()
    assert got == pipe.tokenizer("a photo of a fox", padding="max_length", max_length=77).input_ids and got[-1] == 0

    before = _snapshot(pipe)
    result = train(_cfg(tmp_path, model, also_pt=True), log=_quiet, pipe=pipe)
    after = _snapshot(pipe)
    assert all(torch.equal(before[k], after[k]) for k in before)
    vec = load_file(str(result.output))["emb_params"]
    assert vec.shape == (2, 1024) and not torch.allclose(vec[0], pipe.text_encoder.get_input_embeddings().weight[265])
    pt = result.extra_outputs[0]
    assert torch.equal(torch.load(pt, weights_only=True)["string_to_param"]["*"], vec)
    for path in (result.output, pt):
        emb = read_embedding(path)
        assert emb.widths == {"clip_h": 1024} and emb.vector_count == 2, path
    loaded = StableDiffusionPipeline.from_pretrained(str(model), safety_checker=None, requires_safety_checker=False)
    loaded.load_textual_inversion(str(result.output), token="foxtok")
    ids = loaded.tokenizer.convert_tokens_to_ids(["foxtok", "foxtok_1"])
    assert torch.equal(loaded.text_encoder.get_input_embeddings().weight[ids], vec)


class _Stop(Exception):
    pass


def test_resume_continues_exactly(tmp_path: Path, tiny_sd1_dir: Path) -> None:
    kw = dict(steps=10, save_every=3, lr="0.05:4, 0.02", batch_size=2, flip=True, latent_sampling="random", shuffle_tags=True, tag_dropout=0.3)
    whole = train(_cfg(tmp_path / "a", tiny_sd1_dir, **kw), log=_quiet)

    def stop_at_8(info: dict) -> None:  # type: ignore[type-arg]
        if info["step"] == 8:
            raise _Stop

    cfg = _cfg(tmp_path / "b", tiny_sd1_dir, **kw)
    with pytest.raises(_Stop):
        train(cfg, log=_quiet, progress=stop_at_8)
    assert not cfg.embeddings_dir.joinpath("foxtok.safetensors").exists()
    lines: list[str] = []
    cfg.resume = True
    resumed = train(cfg, log=lines.append)
    assert any("Resuming 'foxtok' at step 6" in line for line in lines)
    from safetensors.torch import load_file

    assert torch.equal(load_file(str(whole.output))["emb_params"], load_file(str(resumed.output))["emb_params"])
    assert whole.loss_csv.read_text() == resumed.loss_csv.read_text()
    assert [p.name for p in resumed.checkpoints] == ["foxtok-3.safetensors", "foxtok-6.safetensors", "foxtok-9.safetensors", "foxtok-10.safetensors"]
    assert resumed.loss_png is not None and resumed.loss_png.stat().st_size > 0
    cfg.vectors = 3
    with pytest.raises(ConfigError, match="--resume needs the settings of the run it continues, but vectors was 2"):
        train(cfg, log=_quiet)


def test_grad_accum_clip_alpha_and_v_prediction(tmp_path: Path) -> None:
    from tihub.engine.tiny import build_tiny_sd1

    model = build_tiny_sd1(tmp_path / "vpred", prediction_type="v_prediction")
    pics = tmp_path / "alpha"
    pics.mkdir()
    arr = np.random.default_rng(0).integers(0, 255, (64, 80, 4), dtype=np.uint8)
    Image.fromarray(arr, "RGBA").save(pics / "a.png")
    Image.fromarray(arr[:, :64, :3], "RGB").save(pics / "b.png")
    result = train(
        _cfg(tmp_path, model, images=pics, grad_accum=2, batch_size=2, size=None, clip_grad="norm:0.01", alpha_as_loss_weight=True, latent_sampling="deterministic", init_text=""),
        log=_quiet,
    )
    assert result.final_loss is not None and np.isfinite(result.final_loss)
    rows = result.loss_csv.read_text().splitlines()
    assert rows[0] == "step,epoch,epoch_step,loss,learn_rate" and len(rows) == 7


def test_bad_inputs_stop_before_any_work(tmp_path: Path, tiny_sd1_dir: Path) -> None:
    def refused(match: str, model: Path = tiny_sd1_dir, **kw) -> None:  # type: ignore[no-untyped-def]
        cfg = _cfg(tmp_path, model, **kw)
        with pytest.raises(ConfigError, match=match) as info:
            train(cfg, log=_quiet)
        assert "\n" not in str(info.value)
        assert not Path(cfg.run_dir).exists()

    empty = tmp_path / "empty"
    empty.mkdir()
    refused("holds no PNG", images=empty)
    refused("is not a folder", images=tmp_path / "missing")
    refused("--vectors 0 is out of range", vectors=0)
    refused("--vectors 76 is out of range", vectors=76)
    refused("cannot be used as a prompt word", name="../evil")
    refused("not a valid schedule", lr="fast")
    refused("--clip-grad", clip_grad="max:3")
    refused("--resume found no checkpoint", resume=True)
    refused("--model .* does not exist", model=tmp_path / "nomodel")
    emb_dir = tmp_path / "home" / "embeddings"
    emb_dir.mkdir(parents=True)
    (emb_dir / "foxtok.pt").write_bytes(b"x")
    refused("already exists", images=_pictures(tmp_path / "p2"))
    (emb_dir / "foxtok.pt").unlink()
    # an init embedding whose width does not fit the model (768 vs the tiny model's 32)
    from safetensors.torch import save_file

    wide = tmp_path / "wide.safetensors"
    save_file({"emb_params": torch.zeros(1, 768)}, str(wide))
    refused("width", init_text=str(wide))


@pytest.mark.parametrize("readback", [1, 20], ids=["every-step", "gpu-batched"])
def test_a_diverging_run_stops_with_one_sentence_and_writes_no_embedding(readback: int, tmp_path: Path, tiny_sd1_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tihub.engine.train as train_mod
    from tihub.errors import EngineError

    # "gpu-batched" reads losses back 20 steps at a time, as on a GPU: NaN steps not yet read
    # back must still stop the run before a checkpoint or the final embedding is written
    monkeypatch.setattr(train_mod, "LOSS_READBACK_EVERY", {"cpu": readback})
    # a rate past the CLI's sanity cap is the quickest way to make the tiny model diverge
    monkeypatch.setattr("tihub.engine.lr_schedule.MAX_LR", 1e31)
    cfg = _cfg(tmp_path, tiny_sd1_dir, lr="1e30", steps=4, save_every=2)
    with pytest.raises(EngineError, match=r"'foxtok' diverged at step \d+ \(the loss is not a number\)") as info:
        train(cfg, log=_quiet)
    assert "\n" not in str(info.value)
    assert not cfg.embeddings_dir.joinpath("foxtok.safetensors").exists()
    assert not list(Path(cfg.run_dir).glob("foxtok-*.safetensors"))


def test_autocast_only_when_frozen_weights_are_in_another_dtype(tiny_sd1_dir: Path) -> None:
    """A pipeline already in the compute dtype runs without autocast (its per-op checks cost CPU
    time on a launch-bound GPU step); the fp32 trainable vectors inside the encoder do not count."""
    cpu = torch.device("cpu")

    def autocast(pipe_dtype, compute):  # type: ignore[no-untyped-def]
        pipe = load_pipeline(str(tiny_sd1_dir), cpu, pipe_dtype)
        session = Session(pipe, 2, cpu, compute, lambda tok, table, key: np.zeros((2, table.shape[1]), np.float32))
        try:
            assert session.params[0].dtype == torch.float32
            return session.autocast
        finally:
            session.close()

    assert autocast(torch.bfloat16, torch.bfloat16) is False
    assert autocast(torch.float32, torch.bfloat16) is True
    assert autocast(torch.float32, torch.float32) is False


def test_bf16_training_without_autocast_learns(tmp_path: Path, tiny_sd1_dir: Path) -> None:
    result = train(_cfg(tmp_path, tiny_sd1_dir, precision="bf16", steps=8), log=_quiet)
    from safetensors.torch import load_file

    vec = load_file(str(result.output))["emb_params"]
    assert vec.dtype == torch.float32 and bool(torch.isfinite(vec).all())
    assert result.final_loss is not None and np.isfinite(result.final_loss)
