"""Prompt text -> text-encoder conditioning, with embeddings spliced in, A1111-style.

1. `parse_attention` splits the text into weighted runs (BREAK starts a new chunk).
2. Each run is tokenized; embedding names are matched on token ids (longest name first), so
   matching is case-insensitive and whole-token, as in A1111. A match becomes N placeholder
   tokens (N = the embedding's vector count) and a `Fix(offset, name)`.
3. Tokens are cut into chunks of 75 (77 with BOS/EOS). For every token, in A1111's order: a
   comma is remembered; a full chunk whose last comma is within 20 tokens is cut after it (the
   tail moves on; A1111's default comma backtrack), a full chunk starts the next; only then is
   the position looked up for an embedding, which never straddles two chunks.
4. Each chunk runs through the text encoder; a forward hook on the token-embedding table writes
   the embedding's vectors over the placeholder rows, so the vectors enter the transformer like
   any token. SDXL: `clip_l` goes to the first encoder, `clip_g` to the second.
5. Weights multiply the encoder output per token, then the mean is restored, taken over the
   whole batch of texts encoded together (`encode_batch`: one prompt's editing schedule), per
   encoder, as A1111's "Original" emphasis does.
6. `BatchConds` holds a batch's conditioning over the model calls (AND parts with weights,
   schedules, negatives) and combines the UNet outputs as A1111's CFG denoiser; `GuidedUNet`
   plugs it into a diffusers pipeline call.

Tokenizing (`PromptTokenizer`) is torch-free; encoding (`PromptEncoder`) needs torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tihub.engine.prompts import parse_attention
from tihub.engine.vocabulary import Vocabulary
from tihub.formats.model import Embedding

CHUNK = 75
COMMA_BACKTRACK = 20


@dataclass
class Fix:
    offset: int  # position in the chunk's 75 tokens
    name: str
    count: int  # vectors written


@dataclass
class Chunk:
    tokens: list[int] = field(default_factory=list)
    multipliers: list[float] = field(default_factory=list)
    fixes: list[Fix] = field(default_factory=list)
    length: int = 0  # real tokens before padding
    # why the chunk ended: "comma" (the comma backtrack moved the tail on), "full" (75 tokens),
    # "embedding" (the next embedding did not fit), "BREAK", or "end" (the text ended)
    cut: str = "end"


@dataclass
class Tokenized:
    chunks: list[Chunk]
    token_count: int  # tokens used, embeddings counted by their vectors
    used: list[str]  # embedding names used, in order of first use


class PromptTokenizer:
    """Tokenizes prompts and matches embedding names (CLIP vocabulary, no model needed)."""

    def __init__(self, tokenizer: Any, vocabulary: Vocabulary | None, accept: Any = None) -> None:
        self.tokenizer = tokenizer
        self.vocabulary = vocabulary
        # accept(name, embedding) -> bool: False skips the embedding (width mismatch, reported)
        self.accept = accept
        self.bos = tokenizer.bos_token_id
        self.eos = tokenizer.eos_token_id
        ids = tokenizer(",", add_special_tokens=False)["input_ids"]
        self.comma = ids[0] if ids else None
        self._name_ids: dict[str, tuple[int, ...]] = {}
        self._lookup: dict[int, list[tuple[tuple[int, ...], str]]] = {}
        self._names: tuple[str, ...] = ()
        self._key: tuple | None = None

    def ids(self, texts: list[str]) -> list[list[int]]:
        if not texts:
            return []
        return [list(x) for x in self.tokenizer(texts, add_special_tokens=False)["input_ids"]]

    def _refresh_lookup(self) -> None:
        if self.vocabulary is None:
            return
        key = self.vocabulary.key()
        if key == self._key:
            return
        self._key = key
        names = tuple(self.vocabulary.names()) + tuple(sorted(self.vocabulary.gone))
        if names == self._names:
            return
        new = [n for n in names if n not in self._name_ids]
        for name, ids in zip(new, self.ids(new), strict=True):
            self._name_ids[name] = tuple(ids)
        lookup: dict[int, list[tuple[tuple[int, ...], str]]] = {}
        for name in names:
            ids = self._name_ids[name]
            if ids:
                lookup.setdefault(ids[0], []).append((ids, name))
        for cands in lookup.values():
            cands.sort(key=lambda c: -len(c[0]))
        self._lookup = lookup
        self._names = names

    def _embedding(self, name: str) -> Embedding | None:
        assert self.vocabulary is not None
        emb = self.vocabulary.load(name)
        if emb is None:
            return None
        if self.accept is not None and not self.accept(name, emb):
            return None
        return emb

    def tokenize(self, text: str) -> Tokenized:
        self._refresh_lookup()
        runs = parse_attention(text)
        run_ids = self.ids([t for t, w in runs if t and not (t == "BREAK" and w == -1)])
        chunks: list[Chunk] = []
        chunk = Chunk()
        used: list[str] = []
        count = 0
        last_comma = -1

        def next_chunk(cut: str = "end") -> None:
            nonlocal chunk, last_comma, count
            count += len(chunk.tokens)
            chunk.length = len(chunk.tokens)
            chunk.cut = cut
            pad = CHUNK - len(chunk.tokens)
            chunk.tokens += [self.eos] * pad
            chunk.multipliers += [1.0] * pad
            chunks.append(chunk)
            chunk = Chunk()
            last_comma = -1

        it = iter(run_ids)
        for text_part, weight in runs:
            if text_part == "BREAK" and weight == -1:
                next_chunk("BREAK")
                continue
            if not text_part:
                continue
            tokens = next(it)
            pos = 0
            while pos < len(tokens):
                token = tokens[pos]
                # A1111's order: the comma bookkeeping and the backtrack come first, for every
                # token, before looking for an embedding at this position.
                if token == self.comma:
                    last_comma = len(chunk.tokens)
                elif len(chunk.tokens) == CHUNK and last_comma != -1 and len(chunk.tokens) - last_comma <= COMMA_BACKTRACK:
                    # the tail after the comma moves to the next chunk; as in A1111 its embedding
                    # fixes stay with the full chunk (they land in its padding)
                    cut = last_comma + 1
                    moved, moved_w = chunk.tokens[cut:], chunk.multipliers[cut:]
                    chunk.tokens, chunk.multipliers = chunk.tokens[:cut], chunk.multipliers[:cut]
                    next_chunk("comma")
                    chunk.tokens, chunk.multipliers = moved, moved_w
                if len(chunk.tokens) == CHUNK:
                    next_chunk("full")
                match = None
                for ids, name in self._lookup.get(token, ()):
                    if tuple(tokens[pos:pos + len(ids)]) == ids:
                        emb = self._embedding(name)
                        if emb is not None:
                            match = (ids, name, emb)
                            break
                if match is None:
                    chunk.tokens.append(token)
                    chunk.multipliers.append(weight)
                    pos += 1
                    continue
                ids, name, emb = match
                n = min(emb.vector_count, CHUNK)
                if n < emb.vector_count and self.vocabulary is not None:
                    self.vocabulary.warn(f"Embedding '{name}' has {emb.vector_count} vectors; only the first {CHUNK} fit in a prompt chunk.")
                if len(chunk.tokens) + n > CHUNK:
                    next_chunk("embedding")
                chunk.fixes.append(Fix(len(chunk.tokens), name, n))
                chunk.tokens += [0] * n
                chunk.multipliers += [weight] * n
                if name not in used:
                    used.append(name)
                pos += len(ids)
        if chunk.tokens or not chunks:
            next_chunk()
        return Tokenized(chunks, count, used)

    def layout(self, tok: Tokenized) -> dict[str, Any]:
        """Where a text's 75-token chunks begin and end (for `generate --json`): the chunk count,
        real tokens per chunk (an embedding counts its vectors), the token positions where chunks
        2.. begin, why each chunk ended (`Chunk.cut`) and the last words before each boundary."""
        starts, at = [], 0
        for c in tok.chunks[:-1]:
            at += c.length
            starts.append(at)
        return {
            "chunks": len(tok.chunks),
            "chunk_tokens": [c.length for c in tok.chunks],
            "boundaries": starts,
            "cuts": [c.cut for c in tok.chunks],
            "ends_with": [self._tail(c) for c in tok.chunks],
        }

    def _tail(self, chunk: Chunk, words: int = 3) -> str:
        """The chunk's last few real tokens as text (an embedding by its name)."""
        starts = {fix.offset + fix.count - 1: fix for fix in chunk.fixes}
        items: list[str] = []
        i = min(chunk.length, CHUNK) - 1
        while i >= 0 and len(items) < words:
            fix = starts.get(i)
            if fix is not None:
                items.insert(0, fix.name)
                i = fix.offset - 1
            else:
                items.insert(0, self.tokenizer.decode([chunk.tokens[i]]).strip())
                i -= 1
        return " ".join(items)


@dataclass
class Encoder:
    key: str  # embedding vector key this encoder takes: clip_l | clip_h | clip_g
    text_encoder: Any
    pad_id: int
    width: int


@dataclass
class Cond:
    """Conditioning for one text: [77*k, C] hidden states, and SDXL's pooled vector."""

    hidden: Any
    pooled: Any = None


class PromptEncoder:
    """Encodes prompt texts on one model (SD1/SD2: one encoder; SDXL: two)."""

    def __init__(self, pipe: Any, family: str, vocabulary: Vocabulary | None, clip_skip: int = 1) -> None:
        self.pipe = pipe
        self.family = family
        self.clip_skip = max(1, int(clip_skip))
        self.vocabulary = vocabulary
        te1 = pipe.text_encoder
        w1 = te1.get_input_embeddings().weight.shape[1]
        if family == "sdxl":
            te2 = pipe.text_encoder_2
            w2 = te2.get_input_embeddings().weight.shape[1]
            self.encoders = [Encoder("clip_l", te1, pipe.tokenizer.pad_token_id, w1), Encoder("clip_g", te2, pipe.tokenizer_2.pad_token_id, w2)]
        else:
            self.encoders = [Encoder("clip_h" if family == "sd2" else "clip_l", te1, pipe.tokenizer.pad_token_id, w1)]
        self.tokenizer = PromptTokenizer(pipe.tokenizer, vocabulary, accept=self.accepts)
        self._empty: Cond | None = None

    # -- which embeddings fit ---------------------------------------------------------------

    def vectors_for(self, emb: Embedding) -> list[Any] | None:
        """Per encoder, the [n, width] array to splice; None when the widths do not fit."""
        if self.family == "sdxl":
            if "clip_l" in emb.vectors and "clip_g" in emb.vectors:
                arrays = [emb.vectors["clip_l"], emb.vectors["clip_g"]]
            else:
                return None
        else:
            if len(emb.vectors) != 1:
                return None
            arrays = list(emb.vectors.values())
        if any(a.ndim != 2 or a.shape[1] != enc.width for a, enc in zip(arrays, self.encoders, strict=True)):
            return None
        return arrays

    def model_width(self) -> int:
        return sum(e.width for e in self.encoders)

    def accepts(self, name: str, emb: Embedding) -> bool:
        if self.vectors_for(emb) is not None:
            return True
        if self.vocabulary is not None:
            where = self.vocabulary.path_of(name) or "in memory"
            widths = "+".join(f"{k} {v}" for k, v in emb.widths.items())
            model = "+".join(f"{e.key} {e.width}" for e in self.encoders)
            made_for = f", an {emb.base.upper()} embedding," if emb.base in ("sd1", "sd2", "sdxl") else ""
            self.vocabulary.warn(
                f"Embedding '{name}' ({where}) has width {emb.width} ({widths}){made_for} but the {self.family.upper()} model's text encoder is {self.model_width()} wide ({model}); it is skipped and '{name}' is read as plain text."
            )
        return False

    # -- encoding ---------------------------------------------------------------------------

    def encode(self, text: str) -> tuple[Cond, Tokenized]:
        """One text alone (a schedule of one entry)."""
        conds, toks = self.encode_batch([text])
        return conds[0], toks[0]

    def encode_batch(self, texts: list[str]) -> tuple[list[Cond], list[Tokenized]]:
        """Encode texts together, as A1111 encodes the texts of one prompt's editing schedule.

        Every text gets as many chunks as the longest one (the missing ones are empty chunks:
        BOS and EOS padding, encoded like any chunk). Per chunk index the whole batch runs
        through each encoder; the weights multiply that encoder's output and the mean of the
        whole batch (not of one text) is restored, separately per encoder (SDXL: clip_l and
        clip_g each), exactly where A1111's "Original" emphasis restores it.
        """
        import torch

        toks: list[Tokenized] = []
        seen: dict[str, Tokenized] = {}
        for text in texts:
            if text not in seen:
                seen[text] = self.tokenizer.tokenize(text)
            toks.append(seen[text])
        k = max(len(t.chunks) for t in toks)
        empty = self._empty_chunk()
        per_chunk: list[Any] = []  # per chunk index: [B, 77, C] (encoders concatenated)
        pooled = None
        for i in range(k):
            rows = [t.chunks[i] if i < len(t.chunks) else empty for t in toks]
            outputs = []
            for idx, enc in enumerate(self.encoders):
                ids = torch.tensor([[self.tokenizer.bos] + c.tokens + [self.tokenizer.eos] for c in rows], dtype=torch.long)
                if enc.pad_id != self.tokenizer.eos:
                    # OpenCLIP-style encoders pad with their own pad id after the first EOS
                    for row, c in enumerate(rows):
                        ids[row, c.length + 2:] = enc.pad_id
                fixes = [(row, fix.offset, vec) for row, c in enumerate(rows) for fix in c.fixes for vec in self._fix_vectors(fix, idx)]
                hidden, pool = self._run(enc.text_encoder, ids.to(enc.text_encoder.device), fixes, last=(self.family == "sdxl"))
                mult = torch.tensor([[1.0] + c.multipliers + [1.0] for c in rows], dtype=hidden.dtype, device=hidden.device)
                outputs.append(_emphasis(hidden, mult))
                if i == 0 and idx == len(self.encoders) - 1 and self.family == "sdxl":
                    pooled = pool  # A1111: the pooled vector of the first chunk
            per_chunk.append(torch.cat(outputs, dim=-1))
        z = torch.cat(per_chunk, dim=1)  # [B, 77*k, C]
        conds = [Cond(z[b], pooled[b] if pooled is not None else None) for b in range(len(texts))]
        return conds, toks

    def empty(self) -> Cond:
        """The empty prompt's conditioning (A1111 pads with it under "Pad conds"); computed once."""
        if self._empty is None:
            self._empty = self.encode("")[0]
        return self._empty

    def _empty_chunk(self) -> Chunk:
        return Chunk([self.tokenizer.eos] * CHUNK, [1.0] * CHUNK, [], 0)

    def _fix_vectors(self, fix: Fix, idx: int) -> list[Any]:
        """The [n, width] vectors of an embedding fix for encoder `idx` (none if it is gone)."""
        import torch

        emb = self.vocabulary.load(fix.name) if self.vocabulary is not None else None
        arrays = self.vectors_for(emb) if emb is not None else None
        if arrays is None:
            return []
        vec = torch.from_numpy(arrays[idx][: fix.count].astype("float32"))
        if not torch.isfinite(vec).all():
            from tihub.errors import EngineError

            raise EngineError(f"Embedding '{fix.name}' holds NaN or infinite numbers; re-download or retrain it (tihub verify {fix.name} shows details).")
        return [vec]

    def _run(self, te: Any, ids: Any, fixes: list, last: bool) -> tuple[Any, Any]:
        import torch

        table = te.get_input_embeddings()

        def splice(_module: Any, _inp: Any, out: Any) -> Any:
            out = out.clone()
            for row, offset, vec in fixes:
                out[row, offset + 1: offset + 1 + vec.shape[0]] = vec.to(device=out.device, dtype=out.dtype)
            return out

        handle = table.register_forward_hook(splice) if fixes else None
        try:
            with torch.no_grad():
                out = te(input_ids=ids, output_hidden_states=True)
        finally:
            if handle is not None:
                handle.remove()
        pooled = getattr(out, "text_embeds", None)
        if pooled is None:
            pooled = getattr(out, "pooler_output", None)
        if last:
            # SDXL: penultimate layer (clip skip counts further back), no final norm, as diffusers
            return out.hidden_states[-(self.clip_skip + 1)], pooled
        if self.clip_skip <= 1:
            return out.last_hidden_state, pooled
        norm = getattr(te, "final_layer_norm", None) or te.text_model.final_layer_norm
        return norm(out.hidden_states[-self.clip_skip]), pooled


def _emphasis(z: Any, mult: Any) -> Any:
    """A1111's "Original" emphasis on one encoder's [B, 77, C] output: multiply each token by
    its weight, then rescale so the mean over the whole batch is what it was."""
    if not bool((mult != 1.0).any()):
        return z
    before = z.mean()
    z = z * mult.unsqueeze(-1)
    return z * (before / z.mean())


# ---------------------------------------------------------------------------------------------
# A batch's conditioning over the sampling steps, and classifier-free guidance as A1111 does it


@dataclass
class Scheduled:
    """One entry of a prompt-editing schedule: `cond` is used by model calls 0..end."""

    end: int
    cond: Cond
    text: str
    tokens: Tokenized | None = None  # its tokenization (the chunk layout `plan` reports)


@dataclass
class Part:
    """One `AND` part of a positive prompt: its weight and its schedule."""

    weight: float
    schedule: list[Scheduled]


@dataclass
class ImageConds:
    parts: list[Part]  # the positive prompt's AND parts (one for a prompt without AND)
    uncond: list[Scheduled]  # the negative prompt (never split at AND, as in A1111)
    used: list[str]  # embedding names used by this image's texts


def _index(schedule: list[Scheduled], call: int) -> int:
    """A1111's pick: the first entry whose end is at or after this model call (0-based); later
    calls keep the last entry."""
    for k, entry in enumerate(schedule):
        if call <= entry.end:
            return k
    return len(schedule) - 1


@dataclass
class CallConds:
    """The conditioning of one model call, in the shape a denoiser consumes: per image its
    prompt's AND parts `[(cond, weight), ...]` and its negative (each a `Cond`: `hidden`
    [tokens, width], `pooled`). Parts of one image share a length; images may differ."""

    positive: list[list[tuple[Cond, float]]]
    negative: list[Cond]


def _repeat_last(hidden: Any, rows: int) -> Any:
    """Pad a [T, C] conditioning to `rows` tokens by repeating its last vector (A1111, for AND
    parts of different lengths)."""
    import torch

    if hidden.shape[0] >= rows:
        return hidden
    return torch.cat([hidden, hidden[-1:].repeat(rows - hidden.shape[0], 1)], dim=0)


def _pad_chunks(hidden: Any, rows: int, empty: Any) -> Any:
    """Pad a [T, C] conditioning with whole empty-prompt chunks (A1111's "Pad conds")."""
    import torch

    if hidden.shape[0] >= rows:
        return hidden
    return torch.cat([hidden] + [empty] * ((rows - hidden.shape[0]) // empty.shape[0]), dim=0)


@dataclass
class Row:
    """One UNet input row of a guidance step: image `image`, conditioning `hidden` [T, C]
    (and SDXL's `pooled`), `weight` (None for the negative prompt)."""

    image: int
    hidden: Any
    pooled: Any
    weight: float | None


class BatchConds:
    """The conditioning of a batch of images over the model calls of one sampling run.

    Built once per batch (`build`); the sampling loop asks `rows(call)` for the UNet inputs of
    a model call and combines the UNet outputs with `combine`. `guide` does both around a
    caller's UNet function. Images never share padding, so an image comes out the same
    whichever batch (grid) it is drawn in:

    * AND parts of one image are padded to that image's longest part by repeating the last
      vector (A1111's reconstruct_multicond_batch; A1111 batches one prompt, so this is what it
      does per image);
    * prompt and negative of different chunk counts run as separate UNet forwards, unless
      `pad_conds` (A1111's "Pad conds" option), which pads the shorter one with empty-prompt
      chunks.
    """

    def __init__(self, images: list[ImageConds], empty: Cond, pad_conds: bool = False) -> None:
        self.images = images
        self.empty = empty
        self.pad_conds = pad_conds
        self.padded = False  # whether "Pad conds" padded anything (A1111 then names it)
        self.tokenizer: PromptTokenizer | None = None  # set by `build`, for `plan`
        self.encoders: list[str] = []
        self._last: tuple[Any, CallConds] | None = None

    @classmethod
    def build(cls, encoder: PromptEncoder, prompts: list[str], negatives: list[str], calls: int, pad_conds: bool = False,
              first_pass: int | None = None) -> BatchConds:
        """Encode the prompts of a batch for a run of `calls` model calls (`first_pass`: this is
        the hires pass, after a first pass of that many model calls; see `prompt_schedule`).

        As in A1111's get_multicond_learned_conditioning: each prompt is split at AND, each
        distinct part (and each distinct negative) gets its editing schedule over `calls`, and
        the texts of one schedule are encoded in one batch (their weight normalisation shares
        a mean). SDXL: an empty negative prompt is zeros (A1111's force_zero_negative_prompt).
        """
        from tihub.engine.prompts import prompt_schedule, split_and

        cache: dict[tuple[str, bool], tuple[list[Scheduled], list[str]]] = {}

        def schedule(text: str, negative: bool) -> tuple[list[Scheduled], list[str]]:
            key = (text, negative and encoder.family == "sdxl" and text == "")
            if key not in cache:
                entries = prompt_schedule(text, calls, first_pass)
                conds, toks = encoder.encode_batch([t for _, t in entries])
                if key[1]:
                    conds = [Cond(c.hidden * 0, c.pooled * 0 if c.pooled is not None else None) for c in conds]
                used = list(dict.fromkeys(n for tok in toks for n in tok.used))
                cache[key] = ([Scheduled(end, c, t, tk) for (end, t), c, tk in zip(entries, conds, toks, strict=True)], used)
            return cache[key]

        images = []
        for prompt, negative in zip(prompts, negatives, strict=True):
            parts, used = [], []
            for text, weight in split_and(prompt):
                sched, u = schedule(text, False)
                parts.append(Part(weight, sched))
                used += u
            uncond, u = schedule(negative, True)
            images.append(ImageConds(parts, uncond, list(dict.fromkeys(used + u))))
        out = cls(images, encoder.empty(), pad_conds)
        out.tokenizer = encoder.tokenizer
        out.encoders = [e.key for e in encoder.encoders]
        return out

    def conds_at(self, call: int) -> CallConds:
        """The conditioning in force at model call `call` (0-based), padded as A1111 pads it,
        as `CallConds` (per image: [(cond, weight), ...] and the negative). The same object is
        returned while no schedule moves on, so a denoiser may cache what it stacks from it."""
        picks = tuple(
            (tuple(_index(p.schedule, call) for p in img.parts), _index(img.uncond, call)) for img in self.images
        )
        if self._last is not None and self._last[0] == picks:
            return self._last[1]
        positive: list[list[tuple[Cond, float]]] = []
        negative: list[Cond] = []
        for img, (part_idx, neg_idx) in zip(self.images, picks, strict=True):
            chosen = [(p.weight, p.schedule[k].cond) for p, k in zip(img.parts, part_idx, strict=True)]
            longest = max(c.hidden.shape[0] for _, c in chosen)
            u = img.uncond[neg_idx].cond
            uh = u.hidden
            hs = [_repeat_last(c.hidden, longest) for _, c in chosen]
            if self.pad_conds and longest != uh.shape[0]:
                self.padded = True
                target = max(longest, uh.shape[0])
                hs = [_pad_chunks(h, target, self.empty.hidden) for h in hs]
                uh = _pad_chunks(uh, target, self.empty.hidden)
            positive.append([(Cond(h, c.pooled), w) for (w, c), h in zip(chosen, hs, strict=True)])
            negative.append(Cond(uh, u.pooled))
        out = CallConds(positive, negative)
        self._last = (picks, out)
        return out

    def rows(self, call: int) -> tuple[list[Row], list[Row]]:
        """UNet input rows for model call `call` (0-based): (positive rows, negative rows).

        Positive rows: every image's AND parts in order; negative rows: one per image."""
        c = self.conds_at(call)
        pos = [Row(i, cond.hidden, cond.pooled, w) for i, parts in enumerate(c.positive) for cond, w in parts]
        neg = [Row(i, cond.hidden, cond.pooled, None) for i, cond in enumerate(c.negative)]
        return pos, neg

    @staticmethod
    def groups(rows: list[Row]) -> list[list[int]]:
        """Indexes of rows that can share one UNet forward (same conditioning length), in order."""
        by_len: dict[int, list[int]] = {}
        for k, r in enumerate(rows):
            by_len.setdefault(int(r.hidden.shape[0]), []).append(k)
        return list(by_len.values())

    @staticmethod
    def combine(pos: list[Row], pos_out: list[Any], uncond_out: list[Any], cfg_scale: float) -> list[Any]:
        """A1111's combine_denoised, per image: uncond + sum over AND parts of
        (part - uncond) * (weight * cfg_scale). Works on denoised images or on noise
        predictions alike (the combination is affine). `pos_out[k]` is the output for
        `pos[k]`, `uncond_out[i]` the negative's output for image i."""
        out = [u.clone() for u in uncond_out]
        for r, o in zip(pos, pos_out, strict=True):
            out[r.image] += (o - uncond_out[r.image]) * (r.weight * cfg_scale)
        return out

    def guide(self, call: int, x: Any, forward: Any, cfg_scale: float) -> Any:
        """Classifier-free guidance for one model call of the whole batch, as A1111's CFG denoiser.

        `x`: [N, ...] the model inputs of the N images (already scaled for the UNet); `forward(
        x_rows, image_indexes, hidden, pooled)` runs the UNet on a batch of rows (hidden
        [R, T, C], pooled [R, P] or None; image_indexes tells which image each row belongs to,
        e.g. for SDXL's time ids) and returns [R, ...]. Rows of equal conditioning length go
        through the UNet together. Returns the combined [N, ...] output.
        """
        import torch

        pos, neg = self.rows(call)
        rows = neg + pos
        outs: list[Any] = [None] * len(rows)
        for group in self.groups(rows):
            sel = [rows[k] for k in group]
            idx = [r.image for r in sel]
            hidden = torch.stack([r.hidden for r in sel]).to(device=x.device, dtype=x.dtype)
            pooled = torch.stack([r.pooled for r in sel]).to(device=x.device, dtype=x.dtype) if sel[0].pooled is not None else None
            res = forward(x[idx], idx, hidden, pooled)
            for k, o in zip(group, res, strict=True):
                outs[k] = o
        combined = self.combine(pos, outs[len(neg):], outs[: len(neg)], cfg_scale)
        return torch.stack(combined)

    @property
    def used(self) -> list[list[str]]:
        return [img.used for img in self.images]

    def plan(self) -> list[dict[str, Any]]:
        """Per image, the chunk layout (for `generate --json`; README "Same image as A1111").

        `{"encoders": [...], "parts": [{"weight", "texts": [...]}], "negative": [...]}`: one entry
        per AND part of the prompt, each with its editing schedule's texts; per text `until_call`
        (the last model call it conditions, 0-based), `tokens` (its conditioning rows, 77 per
        chunk, after the schedule's texts were brought to one chunk count) and the layout of
        `PromptTokenizer.layout` (chunks, chunk_tokens, boundaries, cuts, ends_with). The layout
        holds for every listed encoder: SDXL's two encoders tokenize alike, as in A1111."""

        def text(s: Scheduled) -> dict[str, Any]:
            out: dict[str, Any] = {"text": s.text, "until_call": s.end, "tokens": int(s.cond.hidden.shape[0])}
            if s.tokens is not None and self.tokenizer is not None:
                out.update(self.tokenizer.layout(s.tokens))
            return out

        return [{
            "encoders": list(self.encoders),
            "parts": [{"weight": p.weight, "texts": [text(s) for s in p.schedule]} for p in img.parts],
            "negative": [text(s) for s in img.uncond],
        } for img in self.images]


class GuidedUNet:
    """Runs a diffusers pipeline's denoising with `BatchConds` in place of its prompt embeds.

    Used as `with GuidedUNet(pipe, conds):` around a pipeline call that was given placeholder
    prompt embeds: while inside, `pipe.unet` is this object, which answers each UNet call (one
    per model call, so second-order samplers count twice as in A1111) from the batch's real
    conditioning: the prompt-editing entry for this call, AND parts, separate forwards for
    different lengths, each through the real UNet (its hooks see the real inputs). The
    pipeline then applies its own `uncond + g * (text - uncond)`, so the text half returned is
    the prompt's output for a plain prompt and `uncond + sum(w * (part - uncond))` with AND
    parts, which makes the pipeline's result A1111's combination. Everything else (config,
    dtype, ...) is the real UNet's.
    """

    def __init__(self, pipe: Any, conds: BatchConds) -> None:
        self.__dict__.update(_pipe=pipe, _unet=pipe.unet, conds=conds, calls=0)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["_unet"], name)

    def __enter__(self) -> GuidedUNet:
        # object.__setattr__: the pipeline's own setter would rewrite its config
        object.__setattr__(self._pipe, "unet", self)
        return self

    def __exit__(self, *exc: Any) -> None:
        object.__setattr__(self._pipe, "unet", self._unet)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._guided(*args, **kwargs)

    def _guided(self, sample: Any, timestep: Any, encoder_hidden_states: Any = None, *args: Any, added_cond_kwargs: dict | None = None, return_dict: bool = True, **kwargs: Any) -> Any:
        import torch

        n = len(self.conds.images)
        cfg = sample.shape[0] == 2 * n
        x = sample[n:] if cfg else sample
        call, self.calls = self.calls, self.calls + 1
        time_ids = (added_cond_kwargs or {}).get("time_ids")

        def forward(xs: Any, idx: list[int], hidden: Any, pooled: Any) -> Any:
            extra = dict(kwargs)
            if pooled is not None:
                ids = time_ids[[i + (n if cfg else 0) for i in idx]]
                extra["added_cond_kwargs"] = {"text_embeds": pooled, "time_ids": ids}
            t = timestep
            if torch.is_tensor(t) and t.ndim > 0 and t.shape[0] == sample.shape[0]:
                t = t[[i + (n if cfg else 0) for i in idx]]
            return self._unet(xs, t, *args, encoder_hidden_states=hidden, return_dict=False, **extra)[0]

        pos, neg = self.conds.rows(call)
        plain = all(len(img.parts) == 1 and img.parts[0].weight == 1.0 for img in self.conds.images)
        # negatives first, as diffusers orders its CFG batch
        rows = (neg if cfg or not plain else []) + pos
        outs: list[Any] = [None] * len(rows)
        for group in BatchConds.groups(rows):
            sel = [rows[k] for k in group]
            idx = [r.image for r in sel]
            hidden = torch.stack([r.hidden for r in sel]).to(device=sample.device, dtype=sample.dtype)
            pooled = torch.stack([r.pooled for r in sel]).to(device=sample.device, dtype=sample.dtype) if sel[0].pooled is not None else None
            for k, o in zip(group, forward(x[idx], idx, hidden, pooled), strict=True):
                outs[k] = o
        uncond, cond = outs[: len(rows) - len(pos)], outs[len(rows) - len(pos):]
        text = cond if plain else BatchConds.combine(pos, cond, uncond, 1.0)
        result = torch.stack(uncond + text) if cfg else torch.stack(text)
        return (result,) if not return_dict else _Output(result)


@dataclass
class _Output:
    sample: Any

    def __getitem__(self, i: int) -> Any:
        return (self.sample,)[i]
