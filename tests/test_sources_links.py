"""The links indexer: real link pages from the corpus, synthetic hostile pages, ETag re-sync."""

from __future__ import annotations

import pytest

from servers import Ctx, run_index
from servers.pages import PageServer
from tihub.config import SourceSpec
from tihub.errors import SourceError, UnsafeURL
from tihub.sources import _http
from tihub.sources.links import candidates_from, classify, detect_base, index, parse_html, parse_markdown


@pytest.fixture(autouse=True)
def _fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_http, "BACKOFF", 0.01)


def spec(url: str, allow_private: bool = True) -> SourceSpec:
    return SourceSpec(name="page", kind="links", options={"url": url}, allow_private=allow_private)


def by_name(cands: list) -> dict:
    return {c.name: c for c in cands}


def test_renget_archive_over_http(corpus) -> None:  # type: ignore[no-untyped-def]
    md = (corpus / "na-na-hi__renget" / "archive" / "embeddings.md").read_bytes()
    with PageServer() as srv:
        url = srv.set("/embeddings/raw", md, "text/plain; charset=utf-8")
        cands = run_index(index, spec(url), Ctx())
    names = by_name(cands)
    kanata = names["Amane Kanata"]
    assert kanata.base_model == "Waifu Diffusion v1.2" and kanata.extra["declared_family"] == "sd1"
    assert kanata.files[0].url == "https://gitlab.com/cattoroboto/waifu-diffusion-embeds/-/raw/main/embeddings/kanata-hololive.bin"
    assert kanata.page_url == "https://gitlab.com/cattoroboto/waifu-diffusion-embeds#amane-kanata-hololive"
    assert "Waifu Diffusion v1.2" in kanata.description
    assert names["GigaChad"].base_model == "Stable Diffusion v1.4"
    assert names["Hellhound (MGE) v2"].base_model == "Yiffy e15"
    cookie = names["fortune cookie"]
    assert cookie.status == "manual" and cookie.files[0].manual and cookie.files[0].url is None
    assert cookie.files[0].extra["link"].startswith("https://mega.nz/file/")
    assert names["cookies"].base_model is None
    # The centred collection links at the top are not embeddings.
    assert not any("sd-concepts-library" in (c.files[0].url or "") for c in cands)
    assert len(cands) >= 20


def test_cyberes_static_site_onclick_downloads(corpus) -> None:  # type: ignore[no-untyped-def]
    html = (corpus / "GabrielVidal1__stable-diffusion-textual-inversion-models" / "site" / "index.html").read_text()
    blocks, base = parse_html(html)
    cands, dropped = candidates_from(blocks, "https://cyberes.github.io/stable-diffusion-textual-inversion-models/", False, base)
    names = by_name(cands)
    g = names["001glitch-core"]
    assert g.files[0].url == "https://huggingface.co/sd-concepts-library/001glitch-core/resolve/main/learned_embeds.bin"
    assert g.page_url == "https://huggingface.co/sd-concepts-library/001glitch-core/"
    # Every downloadable concept of models.json is found; restricted ones have no download link.
    import json

    models = json.loads((corpus / "GabrielVidal1__stable-diffusion-textual-inversion-models" / "models.json").read_text())
    urls = {c.files[0].url for c in cands}
    assert len(cands) > 700
    assert sum(m["model_download_link"] in urls for m in models) == len(cands)


def test_readme_video_links_are_not_embeddings(corpus) -> None:  # type: ignore[no-untyped-def]
    md = (corpus / "lugia19__sd-embeds-stuff" / "README.md").read_text()
    cands, _ = candidates_from(parse_markdown(md), "https://github.com/lugia19/sd-embeds-stuff", False)
    assert cands == []  # three mega.nz "Click to play" videos and guide links only


HOSTILE = """<!doctype html><html><head><title>embeds</title></head><body>
<h2>SDXL stuff</h2>
<table><tr><th>Name</th><th>Model</th><th>Download</th></tr>
<tr><td>Good One</td><td>Pony Diffusion V6</td><td><a href="https://files.catbox.moe/abc123.safetensors">files.catbox.moe</a></td></tr>
<tr><td>Relative</td><td>NAI</td><td><a href="files/rel-embed.pt">download</a></td></tr>
<tr><td>Evil JS</td><td></td><td><a href="javascript:alert(1)">x.pt</a></td></tr>
<tr><td>Evil data</td><td></td><td><a href="data:text/html;base64,PHNjcmlwdD4=">x.pt</a></td></tr>
<tr><td>Evil file</td><td></td><td><a href="file:///etc/passwd.pt">x</a></td></tr>
<tr><td>Evil local</td><td></td><td><a href="http://127.0.0.1:9/steal.pt">x</a></td></tr>
<tr><td>Evil decimal</td><td></td><td><a href="http://2130706433/steal.pt">x</a></td></tr>
<tr><td>Evil metadata</td><td></td><td><a href="http://169.254.169.254/latest.bin">x</a></td></tr>
<tr><td>Evil creds</td><td></td><td><a href="https://mega.nz@evil.example/a.pt">x</a></td></tr>
</table>
<ul>
<li>Folder of stuff (SD 2.1): <a href="https://drive.google.com/drive/folders/1AbCdEfGhIjKlMnOp">drive</a>
<li>Single drive file <a href="https://drive.google.com/file/d/1ZyXwVuTsRqPoNmLk/view?usp=sharing">here</a> for Anything V3
<li><a href="https://pixeldrain.com/u/aBcD1234">pixeldrain</a> negative embed, WD 1.3
<li>HF copy <a href="https://huggingface.co/someone/repo/blob/main/neg.safetensors">neg</a>
<li>GitHub copy <a href="https://github.com/someone/repo/blob/main/emb/cat.pt">cat</a>
<li><a href="https://civitai.com/models/4629/deep-negative">Deep Negative</a> on Civitai
<li>Tutorial: <a href="https://mega.nz/file/abc#key">Click to play</a>
<li><a href="https://github.com/AUTOMATIC1111/stable-diffusion-webui">webui</a>
</ul>
</body></html>"""


def test_synthetic_html_with_hostile_links() -> None:
    page = "https://example.org/list/"
    blocks, base = parse_html(HOSTILE)
    cands, dropped = candidates_from(blocks, page, False, base)
    names = by_name(cands)
    assert not any(n.startswith("Evil") for n in names)
    assert dropped == 7
    good = names["Good One"]
    assert good.base_model == "Pony Diffusion V6" and good.extra["declared_family"] == "sdxl"
    assert good.files[0].url == "https://files.catbox.moe/abc123.safetensors" and good.files[0].format == "safetensors"
    assert names["Relative"].files[0].url == "https://example.org/list/files/rel-embed.pt"
    assert names["Relative"].base_model == "NAI"
    folder = next(c for c in cands if "folders" in c.remote_id)
    assert folder.status == "manual" and folder.base_model == "SD 2.1" and folder.extra["declared_family"] == "sd2"
    single = next(c for c in cands if "1ZyXwVuTsRqPoNmLk" in c.remote_id)
    assert single.status == "ok" and single.files[0].url == "https://drive.google.com/uc?export=download&id=1ZyXwVuTsRqPoNmLk"
    assert single.base_model == "Anything V3"
    pd = next(c for c in cands if "pixeldrain" in c.remote_id)
    assert pd.files[0].url == "https://pixeldrain.com/api/file/aBcD1234" and pd.base_model == "WD 1.3"
    assert names["neg"].files[0].url == "https://huggingface.co/someone/repo/resolve/main/neg.safetensors"
    assert names["cat"].files[0].url == "https://raw.githubusercontent.com/someone/repo/main/emb/cat.pt"
    assert names["Deep Negative"].status == "manual"
    assert not any("webui" in c.name or "Click" in c.name or c.remote_id.startswith("https://mega.nz/file/abc") for c in cands)


def test_base_href_to_private_is_ignored_and_private_links_allowed_when_asked() -> None:
    html = '<html><head><base href="http://127.0.0.1/"></head><body><p><a href="x.pt">x</a></p></body></html>'
    blocks, base = parse_html(html)
    cands, _ = candidates_from(blocks, "https://example.org/p/", False, base)
    assert [c.files[0].url for c in cands] == ["https://example.org/p/x.pt"]
    cands, _ = candidates_from(blocks, "https://example.org/p/", True, base)
    assert [c.files[0].url for c in cands] == ["http://127.0.0.1/x.pt"]


def test_markdown_lists_reference_links_and_escapes() -> None:
    md = (
        "# Negatives\n\n"
        "- **bad-hands-5** \x1b[31mred\x1b[0m trained on SD 1.5: [download][bh]\n"
        "- easynegative <https://files.catbox.moe/zz9zz9.safetensors> (SDXL? no, sd1.5)\n"
        "* plain link https://pomf2.lain.la/f/q1w2e3.pt.\n\n"
        "```\nhttps://files.catbox.moe/incode.pt\n```\n"
        "[bh]: https://files.catbox.moe/bh5bh5.pt\n"
    )
    cands = by_name(candidates_from(parse_markdown(md), "https://rentry.org/negs", False)[0])
    bh = cands["bad-hands-5 red trained on SD 1.5"] if "bad-hands-5 red trained on SD 1.5" in cands else None
    names = list(cands)
    assert any(n.startswith("bad-hands-5") for n in names), names
    bh = next(c for n, c in cands.items() if n.startswith("bad-hands-5"))
    assert "\x1b" not in bh.description and bh.files[0].url == "https://files.catbox.moe/bh5bh5.pt"
    assert bh.base_model == "SD 1.5" and bh.extra["section"] == "Negatives"
    urls = {c.files[0].url for c in cands.values()}
    assert "https://files.catbox.moe/zz9zz9.safetensors" in urls and "https://pomf2.lain.la/f/q1w2e3.pt" in urls
    assert not any("incode" in u for u in urls)


def test_etag_and_content_hash_make_resync_one_request() -> None:
    md = "| Name | Model | Download |\n|-|-|-|\n| A | SD 1.5 | [dl](https://files.catbox.moe/aaaaaa.pt) |\n"
    with PageServer() as srv:
        url = srv.set("/a/raw", md, "text/markdown")
        ctx = Ctx()
        assert len(run_index(index, spec(url), ctx)) == 1
        srv.server.reset()
        ctx2 = ctx.next()
        assert run_index(index, spec(url), ctx2) is None
        (req,) = srv.server.requests
        assert req.headers.get("if-none-match")
        # Without an ETag, the content hash still detects "unchanged" with one request.
        url_b = srv.set("/b/raw", md, "text/markdown", etag=False)
        ctx3 = Ctx()
        run_index(index, spec(url_b), ctx3)
        srv.server.reset()
        assert run_index(index, spec(url_b), ctx3.next()) is None
        assert srv.server.count() == 1
        srv.set("/b/raw", md + "| B | NAI | [dl](https://files.catbox.moe/bbbbbb.pt) |\n", "text/markdown", etag=False)
        assert len(run_index(index, spec(url_b), ctx3.next())) == 2


def test_page_failures_and_refusals(monkeypatch: pytest.MonkeyPatch) -> None:
    with PageServer() as srv:
        url = srv.set("/gone", "<html>gone</html>", status=404)
        with pytest.raises(SourceError, match="status 404"):
            run_index(index, spec(url), Ctx())
        url = srv.set("/down", "<html>oops</html>", status=503)
        with pytest.raises(SourceError, match="503"):
            run_index(index, spec(url), Ctx())
        # Loopback pages need allow_private; nothing is requested otherwise.
        srv.server.reset()
        with pytest.raises(UnsafeURL, match="allow_private"):
            run_index(index, spec(srv.url + "/a", allow_private=False), Ctx())
        assert srv.server.requests == []
        # A multi-MB page is fine; past the cap it is refused, streamed or declared.
        big = "<html><body>" + "<div><p>filler text</p>" * 20_000 + "<p>" + "filler text " * 450_000 + "</p>" + "</div>" * 20_000 + '<p><a href="https://files.catbox.moe/big123.pt">Big</a></p></body></html>'
        url = srv.set("/big", big, chunks=20)
        assert len(big) > 5_000_000 and [c.name for c in run_index(index, spec(url), Ctx())] == ["Big"]
        monkeypatch.setattr(_http, "PAGE_CAP", 1_000_000)
        monkeypatch.setattr("tihub.sources.links.PAGE_CAP", 1_000_000)
        with pytest.raises(SourceError, match="cap"):
            run_index(index, spec(url), Ctx())
        url = srv.set("/big2", big)
        with pytest.raises(SourceError, match="cap"):
            run_index(index, spec(url), Ctx())


def test_redirect_to_a_private_address_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    import ipaddress

    import tihub.net as net

    # Pretend 127.0.0.1 is public and 127.0.0.2 private, so one loopback server can play both.
    monkeypatch.setattr(net, "_is_private", lambda ip: ip == ipaddress.ip_address("127.0.0.2"))
    with PageServer() as srv:
        port = srv.url.rsplit(":", 1)[1]
        srv.set("/secret", '<a href="https://files.catbox.moe/secret.pt">s</a>')
        url = srv.set("/hop", "", location=f"http://127.0.0.2:{port}/secret")
        with pytest.raises(UnsafeURL, match="127.0.0.2"):
            run_index(index, spec(url, allow_private=False), Ctx())
        assert "/secret" not in srv.server.paths()


def test_detect_base() -> None:
    assert detect_base("trained on NovelAI (leaked)") == ("NovelAI", "sd1")
    assert detect_base("Waifu Diffusion v1.3 beta epoch05 / v1.2")[1] == "sd1"
    assert detect_base("for SDXL 1.0 only")[1] == "sdxl"
    assert detect_base("WD 1.4 anime")[1] == "sd2"
    assert detect_base("Stable Diffusion v2.1 768")[1] == "sd2"
    assert detect_base("nothing here") is None
    assert classify("https://mega.nz/folder/abc#def", False).manual
    assert classify("https://files.catbox.moe/a.png", False) is None


def test_through_sync_rows_gone_upstream_are_marked_removed(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from tihub.catalog.store import Catalog
    from tihub.config import Workspace
    from tihub.sync import sync_source

    ws = Workspace.locate(tmp_path / "ws").ensure()
    cat = Catalog.open(ws)
    rows = "| Name | Model | Download |\n|-|-|-|\n| A | SD 1.5 | [dl](https://files.catbox.moe/aaaaaa.pt) |\n"
    with PageServer() as srv:
        url = srv.set("/p/raw", rows + "| B | NAI | [dl](https://files.catbox.moe/bbbbbb.pt) |\n", "text/markdown")
        s = spec(url)
        assert sync_source(cat, s, ws).new == 2
        assert sync_source(cat, s, ws).status == "unchanged"
        srv.set("/p/raw", rows, "text/markdown")
        rep = sync_source(cat, s, ws)
        assert (rep.status, rep.removed) == ("ok", 1), rep
        srv.set("/p/raw", "<html>broken</html>", status=500)
        assert sync_source(cat, s, ws).failed
        assert cat.entry("A")["base_model"] == "SD 1.5"


@pytest.mark.parametrize(
    "url",
    ["http://127.1/a.pt", "http://0x7f.0.0.1/a.pt", "http://[::ffff:127.0.0.1]/a.pt", "http://[::1]/a.pt", "http://localhost./a.pt",
     "http://10.1.2.3/a.pt", "http://100.64.0.1/a.pt", "https://u:p@files.catbox.moe/a.pt", " javascript:alert(1)//a.pt",
     "gopher://x/a.pt", "ftp://x/a.pt", "https:///evil.com/a.pt", "http://x:99999/a.pt", "https://a.b/c\r\nd.pt"],
)
def test_private_and_odd_links_are_dropped(url: str) -> None:
    from tihub.sources._http import clean_link

    assert clean_link(url, False) is None
    assert classify(url, False) is None
