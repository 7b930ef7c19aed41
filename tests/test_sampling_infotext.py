"""The sampling keys of an A1111 infotext read back as generate's arguments (no torch needed)."""

from __future__ import annotations

from tihub.engine.sampling.infotext import read_sampling
from tihub.infotext import parse_infotext

CIVITAI_LIKE = (
    "a cat\nNegative prompt: blurry\nSteps: 30, Sampler: DPM++ 2M SDE, Schedule type: Karras, CFG scale: 7, Seed: 12, Size: 512x768, "
    "Model hash: 6ce0161689, Denoising strength: 0.45, ENSD: 31337, RNG: CPU, Hires upscale: 2, Hires steps: 12, Hires upscaler: Latent (bicubic), "
    "Eta: 0.9, Version: v1.10.1"
)


def test_a1111_sampling_keys_become_generate_arguments():
    kwargs, warnings = read_sampling(parse_infotext(CIVITAI_LIKE).parameters)
    hires = kwargs.pop("hires")
    assert kwargs == {"sampler": "DPM++ 2M SDE", "schedule_type": "Karras", "rng": "cpu", "ensd": 31337, "eta": 0.9}
    assert (hires.scale, hires.steps, hires.denoising, hires.upscaler) == (2.0, 12, 0.45, "Latent (bicubic)") and warnings == []


def test_settings_tihub_cannot_follow_are_named_one_sentence_each():
    params = {"Sampler": "Euler a", "Size": "512x512", "Hires resize": "1024x1024", "Hires upscaler": "R-ESRGAN 4x+", "SGM noise multiplier": "True",
              "Sigma churn": "0.5", "RNG": "TPU"}
    kwargs, warnings = read_sampling(params)
    assert kwargs["hires"].scale == 2.0 and kwargs["hires"].upscaler == "Lanczos" and kwargs["s_churn"] == 0.5
    assert any("hires upscaler 'R-ESRGAN 4x+'" in w for w in warnings)
    assert any("the SGM noise multiplier (SGM noise multiplier: True)" in w for w in warnings)
    assert any("RNG 'TPU'" in w for w in warnings)
    assert all(w.count(". ") == 0 and w.endswith(".") for w in warnings)
    # an old A1111 name carries its schedule; no key before 1.9 means the uniform schedule
    assert read_sampling({"Sampler": "DPM++ 2M Karras"})[0] == {"sampler": "DPM++ 2M", "schedule_type": "Karras"}
    assert read_sampling({"Sampler": "DPM++ 2M"})[0] == {"sampler": "DPM++ 2M", "schedule_type": "Uniform"}
    assert read_sampling({"Sampler": "UniPC"}) == ({"sampler": "UniPC", "schedule_type": "Automatic"}, [])


def test_sampler_settings_keys_are_read():
    params = {"Sampler": "UniPC", "UniPC variant": "bh2", "UniPC skip type": "logSNR", "UniPC order": "2", "UniPC lower order final": "False",
              "NGMS": "0.5", "NGMS all steps": "True", "Skip Early CFG": "0.2"}
    kwargs, warnings = read_sampling(params)
    assert warnings == [] and kwargs == {"sampler": "UniPC", "schedule_type": "Automatic", "uni_pc_variant": "bh2", "uni_pc_skip_type": "logSNR",
                                         "uni_pc_order": 2, "uni_pc_lower_order_final": False, "s_min_uncond": 0.5, "s_min_uncond_all": True,
                                         "skip_early_cond": 0.2}
    kwargs, _ = read_sampling({"Sampler": "DPM++ 2M", "Schedule type": "Karras", "Schedule min sigma": "0.1", "Schedule max sigma": "10", "Schedule rho": "5"})
    assert (kwargs["sigma_min"], kwargs["sigma_max"], kwargs["rho"]) == (0.1, 10.0, 5.0)
