"""The whole HTTP API fuzzed from its own OpenAPI description by schemathesis, against a
real server: for every operation, schema-valid and schema-invalid requests (bodies, path
parameters) must never get a 5xx, every answer must be a documented status with the
documented content type and body schema, and invalid data must be refused (4xx).

The default run draws a bounded number of examples per operation (derandomized, so a
failure reproduces); ``-m soak`` runs many more. Generated completions are kept short
(``max_tokens`` <= 8, no ``timeout`` that could expire into a documented 504) and half of
them name the real engine, so sampling, grammars and templates are reached; POST /engines
is confined to an empty --models-dir so no random path is loaded, and DELETE never names
the engine under test."""
from __future__ import annotations

import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from kolosal.server.endpoints import ROUTES as OPERATIONS
from kolosal.server.openapi import openapi_document

from ..server_process import ENGINE, ServerProcess, start_server, stop_server, wait_idle

pytestmark = pytest.mark.model  # every test here needs the model: the pure lane skips the file

SCHEMA = schemathesis.openapi.from_dict(openapi_document())
# Each operation once (aliases answer alike); invalid data where there is a body to spoil
# (path parameters are any string, and Authorization is fixed).
CASES = [pytest.param(operation.method.upper(), operation.paths[0], mode,
                      id=f"{operation.method.upper()} {operation.paths[0]} {mode}")
         for operation in OPERATIONS for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
         if mode == GenerationMode.POSITIVE or operation.request is not None]
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance, negative_data_rejection]
MAX_GENERATED_TOKENS = 8
DEFAULT_EXAMPLES = {GenerationMode.POSITIVE: 10, GenerationMode.NEGATIVE: 5}
SOAK_EXAMPLES = {GenerationMode.POSITIVE: 300, GenerationMode.NEGATIVE: 150}


@pytest.fixture(scope="module")
def fuzz_server(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    models = tmp_path_factory.mktemp("no-models")  # POST /engines may load nothing
    running = start_server(model_path, tmp_path_factory.mktemp("fuzz") / "server.log",
                           "--models-dir", str(models), "--parallel", "4")
    yield running
    stop_server(running)


LENGTH_FIELDS = {"/v1/completions": "max_tokens", "/v1/chat/completions": "max_tokens",
                 "/v1/responses": "max_output_tokens"}


def tame(case: Any, mode: GenerationMode) -> None:
    """Keep generated work small and the engine under test alive. Only valid cases are
    changed (an invalid one must stay invalid, and is refused before any work)."""
    parameters = case.path_parameters or {}
    if parameters.get("engine_id") == ENGINE and case.method == "DELETE":
        parameters["engine_id"] = ENGINE + "-not"
    body = case.body
    if mode != GenerationMode.POSITIVE or not isinstance(body, dict):
        return
    length_field = LENGTH_FIELDS.get(case.path)
    if length_field is not None and not any(key in body for key in LENGTH_FIELDS.values()) \
            and "max_completion_tokens" not in body:
        body[length_field] = MAX_GENERATED_TOKENS  # the defaults run to 128 tokens or more
    for key in ("max_tokens", "max_completion_tokens", "max_output_tokens"):
        if isinstance(body.get(key), int) and body[key] > MAX_GENERATED_TOKENS:
            body[key] = MAX_GENERATED_TOKENS
    if isinstance(body.get("timeout"), (int, float)):
        body["timeout"] = 300.0  # a deadline that expires would be a documented 504
    model = body.get("model")
    if isinstance(model, str) and zlib.crc32(model.encode()) % 2 == 0:
        body["model"] = ENGINE  # half the cases reach the engine, half name unknown models


def fuzz(server: ServerProcess, method: str, path: str, mode: GenerationMode, examples: int) -> None:
    operation = SCHEMA[path][method]

    @settings(max_examples=examples, deadline=None, derandomize=True, database=None,
              phases=[Phase.explicit, Phase.generate],
              suppress_health_check=list(HealthCheck))
    # A server without keys ignores Authorization: keep it out of the generated data.
    @given(case=operation.as_strategy(generation_mode=mode, headers={"Authorization": "Bearer fuzz"}))
    def run(case: Any) -> None:
        tame(case, mode)
        response = case.call(base_url=server.base_url, timeout=300)
        case.validate_response(response, checks=CHECKS)

    run()


@pytest.mark.parametrize(("method", "path", "mode"), CASES)
def test_fuzz_operation(fuzz_server: ServerProcess, method: str, path: str, mode: GenerationMode) -> None:
    fuzz(fuzz_server, method, path, mode, DEFAULT_EXAMPLES[mode])


def test_server_is_clean_after_fuzzing(fuzz_server: ServerProcess) -> None:
    stats = wait_idle(fuzz_server.base_url, timeout=120)["stats"]
    assert stats["slots_busy"] == 0 and stats["queue_depth"] == 0
    served = httpx.get(f"{fuzz_server.base_url}/v1/models", timeout=60)
    assert served.status_code == 200 and any(m["id"] == ENGINE for m in served.json()["data"])


def test_served_document_is_the_one_fuzzed(fuzz_server: ServerProcess) -> None:
    assert httpx.get(f"{fuzz_server.base_url}/openapi.json").json() == openapi_document()


@pytest.mark.soak
@pytest.mark.parametrize(("method", "path", "mode"), CASES)
def test_fuzz_operation_long(fuzz_server: ServerProcess, method: str, path: str,
                             mode: GenerationMode) -> None:
    fuzz(fuzz_server, method, path, mode, SOAK_EXAMPLES[mode])
