"""Randomness as A1111: noise sources, per-image seeds, ENSD, Brownian seeding, infotext keys."""

from __future__ import annotations

import io

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from tihub.engine.samplers import SAMPLERS  # noqa: E402
from tihub.engine.sampling.rng import ImageNoise, PhiloxGenerator, philox4x32, rng_source  # noqa: E402
from tihub.errors import ConfigError  # noqa: E402

# The expected output A1111 publishes for its NV generator (modules/rng_philox.py docstring:
# Generator(seed=0).randn(shape=(3, 4))), printed to 8 decimals.
A1111_PHILOX_SEED0 = [
    [-0.92466259, -0.42534415, -2.6438457, 0.14518388],
    [-0.12086647, -0.57972564, -0.62285122, -0.32838709],
    [-1.07454231, -0.36314407, -1.67105067, 2.26550497],
]


def test_nv_generator_matches_a1111s_published_values():
    got = PhiloxGenerator(0).randn((3, 4))
    assert got.dtype == np.float32 and got.shape == (3, 4)
    # the same Philox words; the Box-Muller floats agree to 3e-7 (the last float32 digits)
    assert np.allclose(got, A1111_PHILOX_SEED0, rtol=0, atol=3e-7), got


def test_philox_known_answer():
    # Random123's published known-answer test for Philox4x32-10: counter 0, key 0
    zeros = [np.zeros(1, dtype=np.uint32) for _ in range(4)]
    assert [int(w[0]) for w in philox4x32(zeros, (0, 0))] == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]
    ones = [np.full(1, 0xFFFFFFFF, dtype=np.uint32) for _ in range(4)]
    assert [int(w[0]) for w in philox4x32(ones, (0xFFFFFFFF, 0xFFFFFFFF))] == [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]


def test_nv_stream_moves_its_offset_per_draw():
    g = PhiloxGenerator(1234)
    a, b = g.randn((4, 8, 8)), g.randn((4, 8, 8))
    assert not np.array_equal(a, b) and np.array_equal(a, PhiloxGenerator(1234).randn((4, 8, 8)))
    assert abs(float(a.mean())) < 0.2 and 0.8 < float(a.std()) < 1.2


def test_sources_and_per_image_generators():
    cpu = torch.device("cpu")
    shape = (4, 8, 8)
    batch = ImageNoise("cpu", [5, 6], shape, cpu)
    first = batch.first()
    assert torch.equal(first[1], torch.randn(shape, generator=torch.Generator().manual_seed(6)))
    # an image's noise does not depend on its batch
    alone = ImageNoise("cpu", [6], shape, cpu)
    assert torch.equal(alone.first()[0], first[1]) and torch.equal(alone.next()[0], batch.next()[1])
    # gpu without an NVIDIA GPU draws what that GPU draws: the NV emulation
    nv, gpu = ImageNoise("nv", [5], shape, cpu), ImageNoise("gpu", [5], shape, cpu)
    assert torch.equal(nv.first(), gpu.first()) and torch.equal(nv.next(), gpu.next())
    assert torch.equal(ImageNoise("nv", [5], shape, cpu).first()[0], torch.from_numpy(PhiloxGenerator(5).randn(shape)))
    assert rng_source("NV") == "nv" and rng_source(None) == "gpu"
    with pytest.raises(ConfigError, match="Unknown RNG source 'tpu'; use gpu, cpu or nv"):
        rng_source("tpu")


def test_ensd_reseeds_after_the_first_noise():
    shape = (4, 8, 8)
    plain, delta = ImageNoise("cpu", [10], shape, torch.device("cpu")), ImageNoise("cpu", [10], shape, torch.device("cpu"), ensd=31337)
    assert torch.equal(plain.first(), delta.first())
    assert torch.equal(delta.next()[0], torch.randn(shape, generator=torch.Generator().manual_seed(10 + 31337)))


# -- through the engine --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def engine(tiny_sd1_dir):
    from tihub.engine.generate import Engine
    from tihub.engine.models import load_model

    return Engine(load_model(tiny_sd1_dir, device="cpu", compute_hash=False))


def _png(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_same_seed_twice_gives_the_same_png_bytes(engine, sampler):
    a = engine.generate("a cat", steps=3, seed=77, size=64, sampler=sampler)
    b = engine.generate("a cat", steps=3, seed=77, size=64, sampler=sampler)
    assert _png(a.images[0]) == _png(b.images[0]) and a.infotexts == b.infotexts


@pytest.mark.parametrize("sampler", ["Euler a", "DPM++ SDE", "DPM++ 2M SDE", "DDIM"])
def test_batch_images_are_seed_plus_i_and_equal_to_lone_images(engine, sampler):
    from tihub.engine.generate import Settings

    settings = Settings(steps=3, sampler=sampler, width=64, height=64)
    batch, _ = engine.sample(["a cat"] * 3, [""] * 3, [40, 41, 42], settings)
    alone, _ = engine.sample(["a cat"], [""], [41], settings)
    # the same noise and the same steps: equal up to the batch's float rounding in the UNet
    assert float((batch[1] - alone[0]).norm() / alone[0].norm()) < 1e-5
    r = engine.generate("a cat", steps=2, seed=40, size=64, sampler=sampler, batch_size=3)
    assert r.seeds == [40, 41, 42] and [p.seeds for p in r.plans] == [[40, 41, 42]]
    assert "Seed: 41," in r.infotexts[1]


def test_sde_samplers_are_seeded_from_the_image_seed(engine):
    a = engine.generate("a cat", steps=3, seed=5, size=64, sampler="DPM++ SDE")
    b = engine.generate("a cat", steps=3, seed=5, size=64, sampler="DPM++ SDE")
    c = engine.generate("a cat", steps=3, seed=6, size=64, sampler="DPM++ SDE")
    assert np.array_equal(np.asarray(a.images[0]), np.asarray(b.images[0]))
    assert not np.array_equal(np.asarray(a.images[0]), np.asarray(c.images[0]))


def _params(result):
    from tihub.infotext import parse_infotext

    return parse_infotext(result.infotexts[0]).parameters


def test_randomness_infotext_keys_are_a1111s(engine):
    plain = _params(engine.generate("a cat", steps=2, seed=1, size=64, sampler="Euler a"))
    assert "RNG" not in plain and "ENSD" not in plain and "Eta" not in plain  # A1111's defaults
    p = _params(engine.generate("a cat", steps=2, seed=1, size=64, sampler="Euler a", rng="cpu", ensd=31337, eta=0.5))
    assert (p["RNG"], p["ENSD"], p["Eta"]) == ("CPU", "31337", "0.5")
    p = _params(engine.generate("a cat", steps=2, seed=1, size=64, sampler="DPM++ 2M", rng="nv", ensd=31337))
    assert p["RNG"] == "NV" and "ENSD" not in p  # DPM++ 2M draws no noise after the first
    p = _params(engine.generate("a cat", steps=2, seed=1, size=64, sampler="Euler", s_churn=0.5, s_tmin=0.1, s_tmax=10, s_noise=1.01))
    assert (p["Sigma churn"], p["Sigma tmin"], p["Sigma tmax"], p["Sigma noise"]) == ("0.5", "0.1", "10", "1.01")
    p = _params(engine.generate("a cat", steps=2, seed=1, size=64, sampler="DDIM", eta=0.3))
    assert p["Eta DDIM"] == "0.3" and p["Schedule type"] == "Automatic"
    p = _params(engine.generate("a cat", steps=2, seed=1, size=64, sampler="Euler", schedule_type="Beta"))
    assert (p["Schedule type"], p["Beta schedule alpha"], p["Beta schedule beta"]) == ("Beta", "0.6", "0.6")


def test_options_a_sampler_does_not_take_are_refused(engine):
    with pytest.raises(ConfigError, match="Sampler Euler a takes no --s-churn \\(A1111 does not pass it\\); use one of: Euler, Heun, DPM2"):
        engine.generate("a cat", steps=2, seed=1, size=64, sampler="Euler a", s_churn=1.0)
    with pytest.raises(ConfigError, match="Sampler DPM\\+\\+ 2M takes no eta"):
        engine.generate("a cat", steps=2, seed=1, size=64, sampler="DPM++ 2M", eta=0.5)


def test_churn_and_eta_change_the_picture(engine):
    base = np.asarray(engine.generate("a cat", steps=3, seed=3, size=64, sampler="Euler").images[0])
    churned = np.asarray(engine.generate("a cat", steps=3, seed=3, size=64, sampler="Euler", s_churn=1.0).images[0])
    assert not np.array_equal(base, churned)
    a = np.asarray(engine.generate("a cat", steps=3, seed=3, size=64, sampler="Euler a", eta=0).images[0])
    b = np.asarray(engine.generate("a cat", steps=3, seed=3, size=64, sampler="Euler a", eta=0, ensd=5).images[0])
    assert np.array_equal(a, b)  # eta 0: no ancestral noise, so ENSD cannot matter


def test_plan_reports_what_ran(engine):
    r = engine.generate("a cat", steps=4, seed=9, size=64, sampler="DPM++ 3M SDE", batch_size=2, rng="cpu", ensd=31337)
    plan = r.plans[0].to_json()
    assert (plan["sampler"], plan["schedule_type"], plan["schedule"], plan["rng"], plan["seeds"], plan["ensd"]) == ("DPM++ 3M SDE", "Automatic", "Exponential", "cpu", [9, 10], 31337)
    assert len(plan["sigmas"]) == 5 and plan["sigmas"][-1] == 0 and plan["brownian_noise"] is True
    assert "hires" in plan and "chunks" in plan


# -- variation seeds (A1111's Variation seed, Variation seed strength, Seed resize from) ----------


def _ref_slerp(t, low, high):
    """A1111's slerp written out: per channel c and column w, the angle between the columns'
    unit vectors over the rows; linear mix (reversed weights, as A1111) when nearly parallel."""
    out = torch.empty_like(low)
    lo = low / low.norm(dim=1, keepdim=True)
    hi = high / high.norm(dim=1, keepdim=True)
    dots = (lo * hi).sum(1)
    if dots.mean() > 0.9995:
        return low * t + high * (1 - t)
    for c in range(low.shape[0]):
        for w in range(low.shape[2]):
            omega = torch.acos(dots[c, w])
            out[c, :, w] = torch.sin((1 - t) * omega) / torch.sin(omega) * low[c, :, w] + torch.sin(t * omega) / torch.sin(omega) * high[c, :, w]
    return out


def _fresh(source, seed, shape):
    """The first draw of a fresh generator of `seed` (cpu: torch's CPU generator; gpu without an
    NVIDIA GPU and nv: the Philox emulation)."""
    if source == "cpu":
        return torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    return torch.from_numpy(PhiloxGenerator(seed).randn(shape))


@pytest.mark.parametrize("source", ["cpu", "gpu", "nv"])
def test_variation_noise_is_a1111s_slerp_of_seed_and_subseed(source):
    shape = (4, 8, 6)
    noise = ImageNoise(source, [10, 10], shape, torch.device("cpu"), subseeds=[70, 71], subseed_strength=0.3)
    got = noise.first()
    for i, sub in enumerate([70, 71]):
        want = _ref_slerp(0.3, _fresh(source, 10, shape), _fresh(source, sub, shape))
        assert torch.allclose(got[i], want, rtol=0, atol=1e-6), i
    # the later noise continues the image seed's own generator (the subseed plays no part)
    if source == "cpu":
        g = torch.Generator().manual_seed(10)
        torch.randn(shape, generator=g)
        assert torch.equal(noise.next()[0], torch.randn(shape, generator=g))
    # strength 0 is the plain seed, to the bit; an image past the subseed list takes variation seed 0
    plain = ImageNoise(source, [10], shape, torch.device("cpu")).first()
    assert torch.equal(ImageNoise(source, [10], shape, torch.device("cpu"), subseeds=[70], subseed_strength=0.0).first(), plain)
    short = ImageNoise(source, [10, 10], shape, torch.device("cpu"), subseeds=[70], subseed_strength=0.5).first()
    assert torch.allclose(short[1], _ref_slerp(0.5, _fresh(source, 10, shape), _fresh(source, 0, shape)), atol=1e-6)


@pytest.mark.parametrize("source", ["cpu", "nv"])
def test_seed_resize_centres_the_noise_of_the_other_size(source):
    shape = (4, 8, 8)
    # from a smaller size (48x32 px = 6x4 latent): pasted into the middle of the seed's own noise
    got = ImageNoise(source, [3], shape, torch.device("cpu"), subseeds=[9], subseed_strength=0.25, seed_resize=(48, 32)).first()[0]
    small = _ref_slerp(0.25, _fresh(source, 3, (4, 4, 6)), _fresh(source, 9, (4, 4, 6)))
    want = _fresh(source, 3, shape)
    want[:, 2:6, 1:7] = small
    assert torch.allclose(got, want, atol=1e-6)
    # from a larger size (96x80 px = 12x10 latent): its middle is cropped out
    got = ImageNoise(source, [3], shape, torch.device("cpu"), seed_resize=(96, 80)).first()[0]
    assert torch.equal(got, _fresh(source, 3, (4, 10, 12))[:, 1:9, 2:10])
    # the same size is the plain noise
    assert torch.equal(ImageNoise(source, [3], shape, torch.device("cpu"), seed_resize=(64, 64)).first(), ImageNoise(source, [3], shape, torch.device("cpu")).first())


def test_variation_seeds_through_the_engine(engine):
    from tihub.engine.generate import Settings
    from tihub.engine.grid import make_grid, parse_axis

    kw = dict(steps=3, size=64, sampler="DPM++ 2M SDE", seed=21, subseed=500, subseed_strength=0.4, seed_resize_from=(48, 48))
    a, b = engine.generate("a cat", **kw), engine.generate("a cat", **kw)
    assert _png(a.images[0]) == _png(b.images[0])  # same seed twice: same PNG bytes
    p = _params(a)
    assert (p["Variation seed"], p["Variation seed strength"], p["Seed resize from"]) == ("500", "0.4", "48x48")
    other = engine.generate("a cat", **{**kw, "subseed": 501})
    assert _png(other.images[0]) != _png(a.images[0])
    # strength 0 is the plain seed (and writes no variation keys)
    off = engine.generate("a cat", **{**kw, "subseed_strength": 0.0, "seed_resize_from": None})
    plain = engine.generate("a cat", steps=3, size=64, sampler="DPM++ 2M SDE", seed=21)
    assert _png(off.images[0]) == _png(plain.images[0]) and "Variation seed" not in _params(off)
    # A1111's batch: every image keeps the seed, the variation seed counts up
    r = engine.generate("a cat", **{**kw, "batch_size": 2, "batch_count": 2})
    assert r.seeds == [21] * 4 and [_params_of(t)["Variation seed"] for t in r.infotexts] == ["500", "501", "502", "503"]
    assert r.plans[1].to_json()["variation"] == {"subseeds": [502, 503], "subseed_strength": 0.4, "seed_resize_from": (48, 48)}
    assert np.array_equal(np.asarray(r.images[0]), np.asarray(a.images[0]))
    # a grid cell equals the lone image: cells over seeds, each with variation seed 500
    settings = Settings(steps=3, sampler="DPM++ 2M SDE", width=64, height=64, subseed=500, subseed_strength=0.4, seed_resize_from=(48, 48))
    cells = make_grid(lambda _m: engine, "a cat", "", [parse_axis("seed:20,21")], settings, 20, None, 8)
    lone = engine.generate("a cat", **kw)
    assert np.array_equal(np.asarray(cells.cells[1].image), np.asarray(lone.images[0]))
    with pytest.raises(ConfigError, match="Variation seed strength 1.5 is out of range; use 0 \\(off\\) to 1"):
        engine.generate("a cat", **{**kw, "subseed_strength": 1.5})
    with pytest.raises(ConfigError, match="Seed resize size '48by48' is not WxH"):
        engine.generate("a cat", **{**kw, "seed_resize_from": "48by48"})


def _params_of(text):
    from tihub.infotext import parse_infotext

    return parse_infotext(text).parameters
