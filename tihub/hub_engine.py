"""The engine verbs of `tihub.hub.Hub`: training pictures and `train`, `prompt`, `generate`,
`grid`, `resolve` and `verify`. `Hub` inherits them; they need the workspace, its catalogue and
`allows_private` of the Hub they are part of. torch is imported only inside the verbs, and only
after every refusal (one sentence) has been made."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tihub.config import Workspace
from tihub.errors import ConfigError, TihubError
from tihub.progress import Event, ProgressCallback, TrainWatcher, sampling_relay
from tihub.results import GenerateResult, GridResult, Picture, PromptEmbedding, PromptReport, TrainResult, VerifyResult


class EngineVerbs:
    """The verbs that run a model (part of `tihub.hub.Hub`)."""

    workspace: Workspace
    catalog: Any  # tihub.catalog.store.Catalog, opened on first use by Hub
    allows_private: Callable[[str | None], bool]

    # ------------------------------------------------------------------ train

    def add_picture(self, folder: str, filename: str, data: bytes) -> dict[str, Any]:
        """Save one training picture (PNG, JPEG or WEBP, checked by decoding it) as
        WORKSPACE/pictures/FOLDER/FILENAME; names are single path parts. Raises TihubError."""
        import os
        import re

        from tihub.previews import open_image

        part = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
        for what, value in (("folder", folder), ("file name", filename)):
            if not part.fullmatch(value):
                raise TihubError(f"The {what} {value!r} is not a plain name; use letters, digits, '-', '_' and '.'.")
        if not filename.lower().endswith((".png", ".jpg", ".jpeg", ".webp")):
            raise TihubError(f"{filename} is not named as a picture; use .png, .jpg or .webp.")
        im = open_image(data, filename)  # refuses anything that is not a decodable picture
        target_dir = self.workspace.root / "pictures" / folder
        target_dir.mkdir(parents=True, exist_ok=True)
        target = target_dir / filename
        tmp = target_dir / f".{filename}.{os.getpid()}.{threading.get_ident()}.part"
        tmp.write_bytes(data)
        os.replace(tmp, target)
        return {"ok": True, "path": str(target), "folder": f"pictures/{folder}", "width": im.width, "height": im.height}

    def train(self, name: str, images: str | Path, model: str | Path, *, steps: int = 200, vectors: int = 1,
              size: str = "auto", lr: str = "0.005", template: str = "style_filewords", device: str | None = None,
              save_every: int = 0, overwrite: bool = False, run_dir: str | Path | None = None,
              preview_every: int = 0, progress: ProgressCallback | None = None,
              on_step: Callable[[dict[str, Any]], None] | None = None, **options: Any) -> TrainResult:
        """Train a new embedding `name` on a folder of pictures, as `tihub train` does: the file goes
        to embeddings/NAME.safetensors, checkpoints, previews and the loss log to the run folder
        (`run_dir`, default WORKSPACE/train/NAME), and the run is recorded in the catalogue.

        `options` are the other settings of `tihub.engine.train.TrainConfig` (`init_text`,
        `batch_size`, `flip`, `seed`, `resume`, `precision`, `preview_prompt`, `preview_steps`, ...).
        With `preview_every` N a preview picture is drawn every N steps.

        `progress(step, total, message)` is told each step (an Event "step" whose data is the
        engine's step dict: `loss`, `lr`, `it_s`, `eta_s`), each new preview picture as it is
        made (an Event "preview" with `path` and `step`) and the run's notes (Events "note").
        `on_step` receives the engine's per-step dict alone. Returns the `tihub train --json` item
        (`path`, `previews`, `checkpoints`, `loss_png`, ...). Raises TihubError for a refused
        setting (one sentence) before anything heavy is imported."""
        from tihub.engine.lr_schedule import validate_schedule
        from tihub.engine.train import TrainConfig, check_config, model_autov2, parse_size
        from tihub.runs import check_device, check_init_text, check_model_arg

        graphs = options.get("cuda_graphs", "auto")
        options["cuda_graphs"] = {None: "auto", True: "on", False: "off"}.get(graphs, graphs) if not isinstance(graphs, str) else graphs
        validate_schedule(lr)
        check_init_text(str(options.get("init_text", "*")))
        self.workspace.ensure()
        cfg = TrainConfig(name=name, images=Path(images), model=str(model), embeddings_dir=self.workspace.embeddings_dir,
                          run_dir=Path(run_dir) if run_dir else self.workspace.train_dir / name, size=parse_size(size),
                          steps=steps, vectors=vectors, lr=lr, template=template, device=device, save_every=save_every,
                          overwrite=overwrite, preview_every=preview_every, **options)
        check_config(cfg)  # every refusal before anything heavy is imported
        check_model_arg(str(model))
        check_device(device)
        cfg.catalog = self.catalog
        from tihub.hashing import HashCache

        cfg.model_hash = model_autov2(str(model), HashCache(self.catalog.engine))  # the workspace's hash cache
        watcher = TrainWatcher(cfg, progress, on_step)
        watcher.note(f"Run folder: {cfg.run_dir}")
        from tihub.engine.train import train

        r = train(cfg, log=watcher.note, progress=watcher.step)
        watcher.finish(r.previews)
        return TrainResult(name=r.name, path=str(r.output), extra_paths=[str(p) for p in r.extra_outputs],
                           run_dir=str(r.run_dir), steps=r.steps, pictures=r.pictures, final_loss=r.final_loss,
                           trained_on=r.sd_checkpoint, checkpoints=[str(p) for p in r.checkpoints],
                           previews=[str(p) for p in r.previews], loss_csv=str(r.loss_csv),
                           loss_png=str(r.loss_png) if r.loss_png else None, seconds=round(r.seconds, 2),
                           steps_from=r.steps_from, file_id=r.file_id)

    # ------------------------------------------------------------------ the engine: generate, grid, verify

    def _hash_cache(self) -> Any:
        try:
            from tihub.hashing import HashCache

            return HashCache(self.catalog.engine)
        except Exception:  # noqa: BLE001 - the cache only saves time
            return None

    def _load_model(self, model: str | Path | None, device: str | None, dtype: str | None, config: str | None,
                    progress: ProgressCallback | None) -> Any:
        """The loaded model of a run (after the cheap checks: device, model argument)."""
        from tihub.runs import check_device, model_arg

        check_device(device)
        chosen = model_arg(model)
        if progress:
            progress(0, None, Event(f"Loading model {chosen} ...", "loading", model=chosen))
        from tihub.engine.models import load_model

        return load_model(chosen, device=device, dtype=dtype, hash_cache=self._hash_cache(), config=config)

    def prompt(self, prompt: str, steps: int = 20, model: str | Path | None = None, *, device: str | None = None) -> PromptReport:
        """How A1111 reads `prompt` without generating anything: the prompt schedule over `steps`,
        attention weights, the token count in 75-token chunks, and the embeddings of embeddings/
        it uses (checked against `model`'s text encoder when given; torch only then).
        `as_dict()` is the `tihub prompt --json` object."""
        if model:
            from tihub.engine.generate import Engine

            info = Engine(self._load_model(model, device, None, None, None), self.workspace.embeddings_dir).explain(prompt, steps)
        else:
            from tihub.clip_vocab import clip_tokenizer
            from tihub.engine.conditioning import PromptTokenizer
            from tihub.engine.generate import explain_prompt
            from tihub.engine.vocabulary import Vocabulary

            vocab = Vocabulary(self.workspace.embeddings_dir)
            info = explain_prompt(prompt, steps, PromptTokenizer(clip_tokenizer(), vocab), vocab)
        used = [PromptEmbedding(name=e["name"], path=e["file"], vectors=e["vectors"], widths=e["widths"]) for e in info["embeddings"]]
        return PromptReport(**{**info, "embeddings": used})

    def generate(self, prompt: str | None = None, *, negative: str | None = None, model: str | Path | None = None,
                 steps: int | None = None, sampler: str | None = None, schedule_type: str | None = None,
                 cfg: float | None = None, seed: int | None = None, size: str | int | None = None, batch_size: int = 1,
                 batch_count: int = 1, clip_skip: int | None = None, pad_conds: bool = False,
                 from_image: str | Path | None = None, out: str | Path | None = None, device: str | None = None,
                 dtype: str | None = None, config: str | None = None, progress: ProgressCallback | None = None,
                 **sampling: Any) -> GenerateResult:
        """Generate pictures for `prompt` with the embeddings in embeddings/ (used by file name, as
        in A1111); each PNG carries A1111 infotext. Saved to `out` (default WORKSPACE/outputs).

        `from_image` re-runs the settings in a picture's infotext; the arguments given here win,
        and every setting that cannot be followed is named in `warnings`. `sampling` holds A1111's
        sampling settings (`rng`, `ensd`, `eta`, `s_churn`, ..., `hires_scale`, `hires_steps`,
        `denoising`, `hires_upscaler`). `progress(step, total, message)` is told each sampling
        step; an Event "pass" starts each batch. Raises TihubError for a refused setting before
        the model loads."""
        from tihub.runs import HIRES_KEYS, check_settings, fold_sampling
        from tihub.runs import from_image as read_image_settings

        base: dict[str, Any] = read_image_settings(from_image) if from_image else {}
        prompt = prompt if prompt is not None else base.get("prompt")
        if prompt is None:
            raise ConfigError("No prompt given; pass PROMPT or --from-image FILE.")
        warnings = list(base.get("warnings", []))
        # settings from the image that have no argument here (RNG, ENSD, hires, ...) pass through;
        # a sampling setting given here wins over the image's
        given: dict[str, Any] = dict(base.get("settings", {}))
        if any(k in sampling for k in HIRES_KEYS):  # hires. fix settings given here complete the image's
            sampling.update({k: given[k] for k in HIRES_KEYS if k in given and k not in sampling})
        for key in sampling:
            given.pop(key, None)
        if pad_conds:
            given["pad_conds"] = True
        base_sampler, base_schedule = given.pop("sampler", None), given.pop("schedule_type", None)
        steps = steps if steps is not None else given.get("steps", 20)
        # an explicit sampler starts from its own schedule unless a schedule type is given too
        schedule_type = schedule_type or (None if sampler else base_schedule)
        sampler = sampler or base_sampler
        size = size or given.get("size")
        cfg = cfg if cfg is not None else given.get("cfg_scale", 7.0)
        clip_skip = clip_skip if clip_skip is not None else given.get("clip_skip", 1)
        folded = fold_sampling(sampling)
        check_settings(steps, sampler, schedule_type, size, clip_skip, cfg, folded)  # before the model loads
        from tihub.engine.generate import Engine

        engine = Engine(self._load_model(model, device, dtype, config, progress), self.workspace.embeddings_dir)
        made_with = base.get("model_hash")
        if made_with and engine.model.hash and made_with.lower() not in (engine.model.hash, (engine.model.sha256 or "")[:8]):
            warnings.append(f"--from-image was made with model hash {made_with}, this model is {engine.model.hash}; images will differ.")
        from tihub.engine.reproduce import engine_kwargs

        with sampling_relay(engine, "generate", progress):
            result = engine.generate(
                prompt, negative if negative is not None else base.get("negative", ""),
                **{**engine_kwargs(given), "steps": steps, "sampler": sampler, "schedule_type": schedule_type,
                   "cfg_scale": cfg, "seed": seed if seed is not None else given.get("seed", -1), "size": size,
                   "batch_size": batch_size, "batch_count": batch_count, "clip_skip": clip_skip,
                   "out": Path(out) if out else self.workspace.root / "outputs", **folded},
            )
        plans = [p.to_json() for p in result.plans]
        pictures = [Picture(path=str(p), seed=sd, infotext=t, embeddings=list(result.used),
                            plan=plans[i // batch_size] if i // batch_size < len(plans) else None)
                    for i, (p, sd, t) in enumerate(zip(result.paths, result.seeds, result.infotexts, strict=False))]
        return GenerateResult(pictures, model=engine.model.name, model_hash=engine.model.hash, warnings=warnings + list(result.warnings))

    def grid(self, name: str | None = None, *, model: str | Path | None = None, x: str | None = None, y: str | None = None,
             z: str | None = None, prompt: str | None = None, negative: str = "", steps: int = 20, sampler: str = "Euler a",
             schedule_type: str | None = None, cfg: float = 7.0, seed: int = -1, size: str | int | None = None,
             batch: int = 8, pad_conds: bool = False, out: str | Path | None = None, device: str | None = None,
             dtype: str | None = None, config: str | None = None, progress: ProgressCallback | None = None,
             **sampling: Any) -> GridResult:
        """An A1111-style X/Y/Z grid (axes as `KIND:VALUES`, e.g. x="seed:1-3"), or with `name`
        and no axes the standard preview of that embedding, attached to its catalogue entry.
        Saved to `out` (default WORKSPACE/grids). `sampling` as in `generate`. Every refusal
        (settings, axis values, device, model) comes before a model loads."""
        from tihub.engine.grid import parse_axis
        from tihub.runs import check_axis, check_device, check_settings, fold_sampling, model_arg

        axes = [parse_axis(a, name) if a else None for a in (x, y, z)]
        while axes and axes[-1] is None:
            axes.pop()
        folded = fold_sampling(sampling)
        check_settings(steps, sampler, schedule_type, size, 1, cfg, folded)
        for axis in axes:
            if axis is not None:
                check_axis(self.workspace.embeddings_dir, axis)
        check_device(device)
        model_arg(model)
        if not axes and not name:
            raise ConfigError("Give an embedding NAME (standard preview) or at least one axis (--x AXIS:VALUES).")
        outdir = Path(out) if out else self.workspace.root / "grids"
        from tihub.engine.generate import Engine, Settings, parse_size
        from tihub.engine.grid import make_grid, standard_preview

        engines: dict[str | None, Engine] = {}

        def engine_for(m: str | None) -> Engine:
            key = m or None
            if key not in engines:
                engines[key] = Engine(self._load_model(key or model, device, dtype, config, progress), self.workspace.embeddings_dir)
            return engines[key]

        if not axes:
            assert name is not None
            found = self.resolve(name)
            engine = engine_for(None)
            with sampling_relay(engine, "preview", progress):
                result = standard_preview(engine, name, found.kind, steps=steps, size=size, out=outdir, batch=batch)
            self.catalog.add_preview(entry_id=found.entry_id, file_id=found.file_id, path=str(result.path),
                                     model_hash=engine.model.hash,
                                     params={"model": engine.model.name, "steps": steps, "kind": found.kind, "infotext": result.infotext})
        else:
            if prompt is None:
                prompt = "{emb}" if any(a is not None and a.kind in ("embedding", "checkpoint") for a in axes) else (name or "")
            native = engine_for(None).model.native_size if size is None else 512
            w, h = parse_size(size, native)
            settings = Settings(steps=steps, sampler=sampler, cfg_scale=cfg, width=w, height=h,
                                schedule_type=schedule_type or "Automatic", pad_conds=pad_conds, **folded)
            folders = [self.workspace.embeddings_dir, self.workspace.train_dir]
            with sampling_relay(engine_for(None), "grid", progress):
                result = make_grid(engine_for, prompt, negative, axes, settings, seed, outdir, batch, folders)
        warnings = list(result.warnings)
        for e in engines.values():
            warnings += e.vocabulary.take_warnings()
        return GridResult(name=name, path=str(result.path), cells=[str(p) for p in result.cell_paths],
                          pipeline_calls=result.calls, warnings=warnings)

    def resolve(self, name: str) -> Any:
        """The embedding file a name means for generate, grid and verify (a
        `tihub.runs.ResolvedEmbedding`: `path`, `entry_id`, `file_id`, `kind`): the catalogue
        entry's local file, else the embeddings/ file prompts would use. Raises NotFound."""
        from tihub.runs import resolve_embedding

        return resolve_embedding(self.catalog, self.workspace.embeddings_dir, name)

    def verify(self, name: str, model: str | Path | None = None, *, steps: int = 20, size: str | int | None = None,
               grid: bool = True, reproduce: bool = False, device: str | None = None, dtype: str | None = None,
               config: str | None = None, progress: ProgressCallback | None = None) -> VerifyResult:
        """Verify embedding `name` (a catalogue name or an embeddings/ file name) on a model: it
        loads (width), its numbers are finite, its vector norms against the model's own; with
        `grid` the standard preview grid. With `reproduce`, the entry's published previews made
        on this model are drawn again and compared (SSIM). Recorded in the catalogue. A failed
        check is a result (`ok` False), not an exception; NotFound for an unknown name."""
        from tihub.engine.verify import record, verify
        from tihub.runs import check_device, check_settings, model_arg

        check_device(device)
        model_arg(model)
        found = self.resolve(name)
        check_settings(steps, None, None, size, 1, 7.0)
        from tihub.engine.generate import Engine

        engine = Engine(self._load_model(model, device, dtype, config, progress), self.workspace.embeddings_dir)
        with sampling_relay(engine, "verify", progress):
            v = verify(engine, name, path=found.path, grid=grid, steps=steps, size=size, out=self.workspace.root / "grids",
                       kind=found.kind)
            if reproduce:
                self._reproduce(engine, v, name, found)
        record(self.catalog, v, found.entry_id, found.file_id)
        return VerifyResult(name=v.name, path=v.file, model=v.model, model_hash=v.model_hash, result=v.result,
                            checks=v.checks, norms=v.norms, grid=v.grid, warnings=v.warnings, reproduced=v.reproduced)

    def _reproduce(self, engine: Any, v: Any, name: str, found: Any) -> None:
        """`verify(reproduce=True)`: the entry's preview records, fetched with its source's URL policy."""
        from tihub.engine.verify import reproduce_published
        from tihub.runs import preview_fetcher

        previews: list[dict[str, Any]] = []
        allow_private = False
        if found.entry_id is not None:
            entry = self.catalog.entry(found.entry_id)
            previews = entry.get("previews", [])
            allow_private = self.allows_private(entry.get("source"))
        emb = None
        if engine.vocabulary.path_of(name) is None:
            from tihub.formats import read_embedding

            try:
                emb = read_embedding(found.path)
            except TihubError:
                emb = None
        with preview_fetcher(allow_private) as fetch:
            reproduce_published(engine, v, previews, fetch, out=self.workspace.root / "outputs" / "reproduce", embedding=emb)
