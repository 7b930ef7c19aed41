"""The huggingface indexer against a loopback Hub (real HTTP, real field names, Link pagination)."""

from __future__ import annotations

import hashlib

import pytest

from servers import Ctx, run_index
from servers.hf import HFFile, HFHub, HFRepo, concept_repo
from tihub.config import SourceSpec
from tihub.errors import SourceError, UnsafeURL
from tihub.sources import _http
from tihub.sources.huggingface import index

ORG = "sd-concepts-library"


@pytest.fixture(autouse=True)
def _fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_http, "BACKOFF", 0.01)


def embed(n: int) -> bytes:
    return b"PK\x03\x04 fake learned_embeds %d " % n + bytes(range(256)) * 4


def hub() -> HFHub:
    repos = [concept_repo(ORG, f"concept-{i}", f"<concept-{i}>", "style" if i % 2 else "object", embed(i)) for i in range(4)]
    gated = concept_repo(ORG, "gated-one", "<gated>", "object", embed(10), gated="auto")
    disabled = concept_repo(ORG, "sam-yang", "<sam>", "style", embed(11), disabled=True)
    emptied = concept_repo(ORG, "paolo-bonolis", "<paolo>", "object", embed(12))
    del emptied.files["learned_embeds.bin"]
    other = concept_repo("someone-else", "not-ours", "<x>", "object", embed(13))
    ds = HFRepo(id=f"{ORG}/negatives", repo_type="dataset", files={
        "bad_prompt.pt": HFFile(embed(20), lfs=True),
        "bad_prompt_version2.pt": HFFile(embed(21), lfs=True),
        "unet/diffusion_pytorch_model.bin": HFFile(b"weights", lfs=True),
        "README.md": HFFile(b"# negatives"),
    })
    ds.touch(5)
    return HFHub(repos + [gated, disabled, emptied, other, ds], page_size=3)


def spec(url: str, **options: object) -> SourceSpec:
    return SourceSpec(name="hf", kind="huggingface", options={"author": ORG, "endpoint": url, **options}, allow_private=True)


def by_id(cands: list) -> dict:
    return {c.remote_id: c for c in cands}


def test_full_sync_reads_concepts_hashes_and_statuses() -> None:
    with hub() as h:
        ctx = Ctx()
        cands = by_id(run_index(index, spec(h.url), ctx))
        assert set(cands) == {f"{ORG}/concept-{i}" for i in range(4)} | {f"{ORG}/gated-one", f"{ORG}/sam-yang", f"{ORG}/paolo-bonolis"}
        c1 = cands[f"{ORG}/concept-1"]
        assert c1.triggers == {"a1111": "concept-1", "diffusers": "<concept-1>"}
        assert c1.kind == "style" and c1.status == "ok" and c1.licence == "mit"
        (f,) = c1.files
        assert f.file_name == "learned_embeds.bin"
        assert f.sha256 == hashlib.sha256(embed(1)).hexdigest() and f.size == len(embed(1))
        repo = h.repos[f"model:{ORG}/concept-1"]
        assert f.url == f"{h.url}/{ORG}/concept-1/resolve/{repo.sha}/learned_embeds.bin"
        assert cands[f"{ORG}/concept-0"].kind == "object"
        assert cands[f"{ORG}/gated-one"].status == "gated"
        assert cands[f"{ORG}/gated-one"].files[0].sha256 == hashlib.sha256(embed(10)).hexdigest()
        assert cands[f"{ORG}/sam-yang"].status == "disabled" and cands[f"{ORG}/sam-yang"].files == []
        assert cands[f"{ORG}/paolo-bonolis"].status == "empty"
        # The embeddings themselves were never downloaded, and disabled repos cost no request.
        paths = h.server.paths()
        assert not any("learned_embeds" in p or p.startswith("/cdn/") for p in paths)
        assert not any("sam-yang" in p for p in paths)
        # 7 repos, 3 per page: 3 listing pages following the Link header.
        assert sum(1 for p in paths if p == "/api/models") == 3


def test_unchanged_resync_costs_only_listing_and_changes_are_incremental() -> None:
    with hub() as h:
        ctx = Ctx()
        first = run_index(index, spec(h.url), ctx)
        h.server.reset()
        ctx2 = ctx.next()
        assert run_index(index, spec(h.url), ctx2) is None  # SourceUnchanged
        assert h.server.paths() == ["/api/models"] * 3

        h.repos[f"model:{ORG}/concept-2"].touch(99)
        h.repos[f"model:{ORG}/concept-2"].files["token_identifier.txt"] = HFFile(b"<renamed>")
        h.server.reset()
        ctx3 = ctx2.next()
        third = by_id(run_index(index, spec(h.url), ctx3))
        assert set(third) == {f"{ORG}/concept-2"}
        assert third[f"{ORG}/concept-2"].triggers["diffusers"] == "<renamed>"
        # The other repos are kept as they are, not re-read.
        assert set(third) | ctx3.kept == {c.remote_id for c in first}
        others = [p for p in h.server.paths() if p != "/api/models"]
        assert others and all("concept-2" in p for p in others)


def test_datasets_and_file_filters() -> None:
    with hub() as h:
        cands = by_id(run_index(index, spec(h.url, repo_types=["model", "dataset"]), Ctx()))
        a = cands[f"datasets/{ORG}/negatives/bad_prompt.pt"]
        b = cands[f"datasets/{ORG}/negatives/bad_prompt_version2.pt"]
        assert a.name == "bad_prompt" and b.name == "bad_prompt_version2"
        assert a.files[0].url.startswith(f"{h.url}/datasets/{ORG}/negatives/resolve/")
        assert a.files[0].sha256 == hashlib.sha256(embed(20)).hexdigest()
        assert not any("diffusion_pytorch_model" in k for k in cands)


def test_token_opens_gated_repos_and_env_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    with hub() as h:
        h.token = "hf_secret"
        monkeypatch.setenv("HF_TOKEN", "hf_secret")
        monkeypatch.setenv("HF_ENDPOINT", h.url)
        s = SourceSpec(name="hf", kind="huggingface", options={"author": ORG}, allow_private=True)
        cands = by_id(run_index(index, s, Ctx()))
        gated = cands[f"{ORG}/gated-one"]
        assert gated.status == "ok" and gated.triggers["diffusers"] == "<gated>"
        assert all(r.headers.get("authorization") == "Bearer hf_secret" for r in h.server.requests)


def test_offline_mode_refuses_the_public_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    s = SourceSpec(name="hf", kind="huggingface", options={"author": ORG})
    with pytest.raises(SourceError, match="HF_HUB_OFFLINE"):
        run_index(index, s, Ctx())


def test_retries_5xx_then_succeeds_and_gives_up_cleanly() -> None:
    with hub() as h:
        h.fail_listing = 2
        assert len(run_index(index, spec(h.url), Ctx())) == 7
        h.fail_listing = 100
        with pytest.raises(SourceError, match="kept answering status 503"):
            run_index(index, spec(h.url), Ctx())


def test_private_endpoint_needs_allow_private() -> None:
    with hub() as h:
        s = SourceSpec(name="hf", kind="huggingface", options={"author": ORG, "endpoint": h.url})
        with pytest.raises(UnsafeURL, match="allow_private"):
            run_index(index, s, Ctx())
        assert h.server.requests == []


@pytest.mark.parametrize(
    "body, match",
    [(b"<html><body>Cloudflare</body></html>", "HTML instead of JSON"), (b"[{\"id\": ", "malformed JSON"), (b"{\"error\": 1}", "did not answer with a list")],
)
def test_malformed_listing(body: bytes, match: str) -> None:
    from servers import LoopbackServer, Reply

    with LoopbackServer(lambda req: Reply(200, body, {"Content-Type": "application/json"})) as srv:
        with pytest.raises(SourceError, match=match):
            run_index(index, spec(srv.url), Ctx())


def test_oversized_answer_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from servers import LoopbackServer, Reply

    monkeypatch.setattr(_http, "JSON_CAP", 1000)
    with LoopbackServer(lambda req: Reply(200, iter([b"[" + b" " * 600] * 4 + [b"]"]), {"Content-Type": "application/json"})) as srv:
        f = _http.Fetcher(None, _http.URLPolicy(allow_private=True), source="hf")
        with pytest.raises(SourceError, match="over the cap"):
            f.get(srv.url + "/api/models", cap=1000)


def test_through_sync_and_the_catalogue(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from tihub.catalog.store import Catalog
    from tihub.config import Workspace
    from tihub.sync import sync_source

    ws = Workspace.locate(tmp_path / "ws").ensure()
    cat = Catalog.open(ws)
    with hub() as h:
        s = spec(h.url)
        first = sync_source(cat, s, ws)
        assert first.status == "ok" and first.new == 7, first.error
        assert sync_source(cat, s, ws).status == "unchanged"
        # One repo changes: it is re-read, the six others are kept (not marked removed).
        h.repos[f"model:{ORG}/concept-0"].touch(42)
        third = sync_source(cat, s, ws)
        assert (third.status, third.removed, third.total) == ("ok", 0, 7), third
        # A repo deleted upstream is marked removed, never deleted.
        del h.repos[f"model:{ORG}/concept-3"]
        fourth = sync_source(cat, s, ws)
        assert fourth.status == "ok" and fourth.removed == 1, fourth
        # The Hub failing leaves the catalogue as it was.
        h.fail_listing = 100
        assert sync_source(cat, s, ws).failed
        assert cat.entry("concept-1")["name"] == "concept-1"


def test_polite_http_429_retry_after_rate_limit_headers_and_deadline() -> None:
    import time

    from servers import LoopbackServer, Reply

    from tihub.net import URLPolicy
    from tihub.sources._http import Fetcher, retry_delay

    assert retry_delay({"retry-after": "7"}, 0) == 7.0
    assert retry_delay({"ratelimit": '"api";r=0;t=55'}, 0) == 55.0
    assert retry_delay({"x-ratelimit-reset": "3"}, 0) == 3.0
    assert retry_delay({}, 2) == _http.BACKOFF * 4
    answers = iter([Reply.json({"error": "slow down"}, 429, Retry_After="1"), Reply.json({"error": "slow down"}, 429, RateLimit='"api";r=0;t=2'), Reply.json([])])
    waits: list[float] = []
    with LoopbackServer(lambda req: next(answers)) as srv:
        f = Fetcher(None, URLPolicy(allow_private=True), source="hf", sleep=waits.append)
        assert f.get(srv.url + "/api/models").json() == []
        assert waits == [1.0, 2.0] and f.requests == 3
    # A server asking for a wait longer than the deadline allows: stop now, one sentence.
    with LoopbackServer(lambda req: Reply.json({}, 429, Retry_After="30")) as srv:
        f = Fetcher(None, URLPolicy(allow_private=True), source="hf", deadline=time.monotonic() + 5, sleep=waits.append)
        with pytest.raises(SourceError, match="deadline"):
            f.get(srv.url + "/x")
    # A slow server past the deadline.
    with LoopbackServer(lambda req: Reply(200, iter([b"[", b"]"]), delay=0.3)) as srv:
        f = Fetcher(None, URLPolicy(allow_private=True), source="hf", deadline=time.monotonic() + 0.1)
        with pytest.raises(SourceError, match="deadline"):
            f.get(srv.url + "/x")


def test_licence_comes_from_the_license_tag_as_listings_have_no_card_data() -> None:
    repo = concept_repo(ORG, "openrail", "<o>", "style", embed(30), tags=["license:creativeml-openrail-m", "region:us"])
    repo.card_data = {"license": "something-else"}  # only in the repo's own info, never in listings
    with HFHub([repo]) as h:
        (c,) = run_index(index, spec(h.url), Ctx())
        assert c.licence == "creativeml-openrail-m"
        assert all("cardData=" not in (r.raw_path or "") for r in h.server.requests)


def test_rate_limit_waits_as_the_hub_says_and_resumes(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Hub's 429 `RateLimit: "api";r=0;t=N`: the sync waits N seconds (shown), then goes on."""
    import tihub.sources.huggingface as hf

    with hub() as h:
        waits: list[float] = []

        def sleep(seconds: float) -> None:  # the window resets while we wait
            waits.append(seconds)
            h.new_window()

        monkeypatch.setattr(hf, "_sleep", sleep)
        h.rate_wait = 287
        h.new_window(budget=5)
        ctx = Ctx()
        shown: list[str] = []
        ctx.progress_cb = lambda msg, done, total: shown.append(msg)
        cands = by_id(run_index(index, spec(h.url), ctx))
        assert waits == [287.0] and h.rate_limited == 1
        assert any("waiting 287 s" in m for m in shown)
        assert f"{ORG}/concept-3" in cands and ctx.complete  # nothing skipped
        assert ctx.new_state["left_for_next_sync"] == 0


def test_rate_limit_past_the_deadline_leaves_repos_for_the_next_sync(monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    import tihub.sources.huggingface as hf

    monkeypatch.setattr(hf, "_sleep", lambda s: pytest.fail("must not wait past the deadline"))
    with hub() as h:
        h.rate_wait = 300
        h.new_window(budget=6)  # 3 listing pages, then a few repo requests
        ctx = Ctx(deadline=time.monotonic() + 60)
        shown: list[str] = []
        ctx.progress_cb = lambda msg, done, total: shown.append(msg)
        first = by_id(run_index(index, spec(h.url), ctx))
        left = ctx.new_state["left_for_next_sync"]
        assert left > 0 and not ctx.complete  # partial: nothing is marked removed
        assert any(f"{left} of 7 repos were left for the next sync" in m for m in shown)
        # the next sync (new window) reads only what was left, and finishes
        h.new_window()
        h.server.reset()
        ctx2 = ctx.next()
        second = by_id(run_index(index, spec(h.url), ctx2))
        assert ctx2.complete and ctx2.new_state["left_for_next_sync"] == 0
        assert not set(first) & set(second)  # repos read the first time are not read again
        assert set(first) | set(second) == {f"{ORG}/concept-{i}" for i in range(4)} | {
            f"{ORG}/gated-one", f"{ORG}/sam-yang", f"{ORG}/paolo-bonolis"}
        assert 0 < h.server.count("/api/models/") <= left  # at most one tree per repo left, no more
