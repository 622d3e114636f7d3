"""Schemathesis over /openapi.json against the live server: generated requests, seeded and bounded, no 5xx.

Requests that fit the schema (positive) and requests that break it (negative) are sent to every
operation. (schemathesis' pytest plugin, `from_fixture`, relies on a pytest internal that pytest 9.2
removed, so the operations are driven with hypothesis directly.)
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance, status_code_conformance

EXAMPLES = 40  # per operation and mode


@pytest.fixture(scope="module")
def operations(server):
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    found = {f"{op.method.upper()} {op.path}": op for op in (result.ok() for result in schema.get_all_operations())}
    # the map's endpoints (/map/*, /search/terms): fuzzed against a server with a map, in test_map_api.py
    assert set(found) >= {
        "POST /search",
        "GET /items/{id}",
        "GET /items",
        "GET /thumbnails/{id}",
        "GET /thumbnails",
        "GET /healthz",
    }
    return found


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "mode"),
    [
        ("POST /search", GenerationMode.POSITIVE),
        ("POST /search", GenerationMode.NEGATIVE),  # GETs take any string: nothing negative to generate
        ("GET /items/{id}", GenerationMode.POSITIVE),
        ("GET /items", GenerationMode.POSITIVE),  # ?id=
        ("GET /thumbnails/{id}", GenerationMode.POSITIVE),
        ("GET /thumbnails", GenerationMode.POSITIVE),
        ("GET /healthz", GenerationMode.POSITIVE),
    ],
    ids=["search", "search-negative", "items", "items-query", "thumbnails", "thumbnails-query", "healthz"],
)
def test_no_generated_request_gets_a_5xx(operations, name, mode):
    checks = [not_a_server_error]
    if mode == GenerationMode.POSITIVE:  # a request the schema allows gets a documented status and body
        checks += [status_code_conformance, response_schema_conformance]
    seen: list[int] = []

    @given(case=operations[name].as_strategy(generation_mode=mode))
    @settings(max_examples=EXAMPLES, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck))
    def run(case):
        response = case.call(timeout=30)
        seen.append(response.status_code)
        case.validate_response(response, checks=checks)

    run()
    assert seen and max(seen) < 500
