"""The HTTP API against its own OpenAPI description, with schemathesis over real HTTP: generated
requests (a small bounded run) never get a 500, and every response matches its schema."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from web_helpers import start_server, synced_workspace

schemathesis = pytest.importorskip("schemathesis", reason="schemathesis (requirements/ci.txt) is not installed")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from schemathesis.specs.openapi.checks import positive_data_acceptance  # noqa: E402


@pytest.fixture(scope="module")
def web_schema(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    root: Path = tmp_path_factory.mktemp("schema")
    with synced_workspace(root / "home") as (home, _hub):
        server = start_server(home)
        try:
            yield schemathesis.openapi.from_url(server.url + "/openapi.json")
        finally:
            server.stop()


OPERATIONS = ["GET /api/search", "GET /api/entries/{entry}", "GET /api/local", "GET /api/compat",
              "POST /api/fetch", "POST /api/remove", "POST /api/sync", "POST /api/export", "POST /api/grid", "POST /api/verify",
              "PUT /api/pictures/{folder}/{filename}", "GET /api/jobs", "GET /api/jobs/{job_id}"]


@pytest.mark.parametrize("operation", OPERATIONS)
def test_api_matches_its_openapi_description(web_schema, operation: str) -> None:  # type: ignore[no-untyped-def]
    # schemathesis' own pytest plugin does not load under this pytest, so each operation's
    # strategy runs under hypothesis directly: the same generated cases and checks.
    ops = {f"{r.ok().method.upper()} {r.ok().path}": r.ok() for r in web_schema.get_all_operations()}
    assert operation in ops, sorted(ops)

    # A picture upload's body must decode as a picture, which a schema cannot say: a 400 for
    # random bytes is right there, so only that operation skips the "valid data accepted" check.
    excluded = [positive_data_acceptance] if operation.startswith("PUT /api/pictures") else []

    @given(case=ops[operation].as_strategy())
    @settings(max_examples=20, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
    def check(case) -> None:  # type: ignore[no-untyped-def]
        response = case.call_and_validate(timeout=30, excluded_checks=excluded)
        assert response.status_code < 500

    check()
