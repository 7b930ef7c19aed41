"""Prompt text -> text-encoder conditioning, with embeddings spliced in, A1111-style.

1. `parse_attention` splits the text into weighted runs (BREAK starts a new chunk).
2. Each run is tokenized; embedding names are matched on token ids (longest name first), so
   matching is case-insensitive and whole-token, as in A1111. A match becomes N placeholder
   tokens (N = the embedding's vector count) and a `Fix(offset, name)`.
3. Tokens are cut into chunks of 75 (77 with BOS/EOS). An embedding never straddles two chunks:
   it moves to the next one. A chunk that fills up within 20 tokens after a comma is cut after
   the comma instead (A1111's default comma padding backtrack).
4. Each chunk runs through the text encoder; a forward hook on the token-embedding table writes
   the embedding's vectors over the placeholder rows, so the vectors enter the transformer like
   any token. SDXL: `clip_l` goes to the first encoder, `clip_g` to the second.
5. Weights multiply the encoder output per token, then the chunk's mean is restored.

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

        def next_chunk() -> None:
            nonlocal chunk, last_comma, count
            count += len(chunk.tokens)
            chunk.length = len(chunk.tokens)
            pad = CHUNK - len(chunk.tokens)
            chunk.tokens += [self.eos] * pad
            chunk.multipliers += [1.0] * pad
            chunks.append(chunk)
            chunk = Chunk()
            last_comma = -1

        it = iter(run_ids)
        for text_part, weight in runs:
            if text_part == "BREAK" and weight == -1:
                next_chunk()
                continue
            if not text_part:
                continue
            tokens = next(it)
            pos = 0
            while pos < len(tokens):
                token = tokens[pos]
                match = None
                for ids, name in self._lookup.get(token, ()):
                    if tuple(tokens[pos:pos + len(ids)]) == ids:
                        emb = self._embedding(name)
                        if emb is not None:
                            match = (ids, name, emb)
                            break
                if match is None:
                    if token == self.comma:
                        last_comma = len(chunk.tokens)
                    elif len(chunk.tokens) == CHUNK and last_comma != -1 and len(chunk.tokens) - last_comma <= COMMA_BACKTRACK:
                        cut = last_comma + 1
                        moved, moved_w = chunk.tokens[cut:], chunk.multipliers[cut:]
                        chunk.tokens, chunk.multipliers = chunk.tokens[:cut], chunk.multipliers[:cut]
                        next_chunk()
                        chunk.tokens, chunk.multipliers = moved, moved_w
                    if len(chunk.tokens) == CHUNK:
                        next_chunk()
                    chunk.tokens.append(token)
                    chunk.multipliers.append(weight)
                    pos += 1
                    continue
                ids, name, emb = match
                n = min(emb.vector_count, CHUNK)
                if n < emb.vector_count and self.vocabulary is not None:
                    self.vocabulary.warn(f"Embedding '{name}' has {emb.vector_count} vectors; only the first {CHUNK} fit in a prompt chunk.")
                if len(chunk.tokens) + n > CHUNK:
                    next_chunk()
                chunk.fixes.append(Fix(len(chunk.tokens), name, n))
                chunk.tokens += [0] * n
                chunk.multipliers += [weight] * n
                if name not in used:
                    used.append(name)
                pos += len(ids)
        if chunk.tokens or not chunks:
            next_chunk()
        return Tokenized(chunks, count, used)


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
        import torch

        tok = self.tokenizer.tokenize(text)
        k = len(tok.chunks)
        outputs = []
        pooled = None
        for idx, enc in enumerate(self.encoders):
            te = enc.text_encoder
            device = te.device
            ids = torch.tensor([[self.tokenizer.bos] + c.tokens + [self.tokenizer.eos] for c in tok.chunks], dtype=torch.long)
            if enc.pad_id != self.tokenizer.eos:
                # OpenCLIP-style encoders pad with their own pad id after the first EOS
                for row, c in enumerate(tok.chunks):
                    ids[row, c.length + 2:] = enc.pad_id
            fixes = []
            for row, c in enumerate(tok.chunks):
                for fix in c.fixes:
                    emb = self.vocabulary.load(fix.name) if self.vocabulary is not None else None
                    arrays = self.vectors_for(emb) if emb is not None else None
                    if arrays is None:
                        continue
                    vec = torch.from_numpy(arrays[idx][: fix.count].astype("float32"))
                    if not torch.isfinite(vec).all():
                        from tihub.errors import EngineError

                        raise EngineError(f"Embedding '{fix.name}' holds NaN or infinite numbers; re-download or retrain it (tihub verify {fix.name} shows details).")
                    fixes.append((row, fix.offset, vec))
            hidden, pool = self._run(te, ids.to(device), fixes, last=(self.family == "sdxl"))
            outputs.append(hidden)
            if idx == len(self.encoders) - 1 and self.family == "sdxl":
                pooled = pool[0]
        z = torch.cat(outputs, dim=-1)  # [k, 77, C]
        mult = torch.tensor([[1.0] + c.multipliers + [1.0] for c in tok.chunks], dtype=z.dtype, device=z.device)
        if (mult != 1.0).any():
            for row in range(k):
                before = z[row].mean()
                z[row] = z[row] * mult[row].unsqueeze(-1)
                z[row] = z[row] * (before / z[row].mean())
        return Cond(z.reshape(k * 77, -1), pooled), tok

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
