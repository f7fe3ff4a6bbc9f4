"""Crafted schemas and grammars against the real server (issue 27): each one killed the whole
process (a stack overflow compiling it), answered 500 after it had started, or answered 200
with nothing. Now each is a 400 that names the limit or the fault, or a normal answer, and
the server carries on."""
from __future__ import annotations

from typing import Any

import httpx
import pytest

from ..server_process import ENGINE, ServerProcess
from ..toolcalls.test_limits import ref_chain, rule_chain

pytestmark = pytest.mark.model  # every test here needs the model: the pure lane skips the file

TIMEOUT = httpx.Timeout(120.0)


def chat(server: ServerProcess, **fields: Any) -> httpx.Response:
    body = {"model": ENGINE, "messages": [{"role": "user", "content": "Answer."}], "max_tokens": 8,
            "temperature": 0, **fields}
    return httpx.post(f"{server.base_url}/v1/chat/completions", json=body, timeout=TIMEOUT)


def completion(server: ServerProcess, **fields: Any) -> httpx.Response:
    body = {"model": ENGINE, "prompt": "Answer:", "max_tokens": 8, "temperature": 0, **fields}
    return httpx.post(f"{server.base_url}/v1/completions", json=body, timeout=TIMEOUT)


def schema_format(schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}


def assert_400(response: httpx.Response, param: str, *fragments: str) -> None:
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param, error
    for fragment in fragments:
        assert fragment in error["message"], error


def assert_alive(server: ServerProcess) -> None:
    assert server.process.poll() is None, server.log()[-3000:]
    answer = completion(server, max_tokens=2)
    assert answer.status_code == 200, answer.text


def test_deep_ref_chains_and_rule_chains_never_end_the_process(server: ServerProcess) -> None:
    """Each of these was a SIGSEGV within seconds."""
    assert_400(chat(server, response_format=schema_format(ref_chain(10_000))), "response_format",
               "limit 10000")
    answer = completion(server, json_schema=ref_chain(1_000))  # 91 KB, well within the bounds
    assert answer.status_code == 200, answer.text
    assert answer.json()["choices"][0]["text"].startswith('"')
    assert_400(completion(server, grammar=rule_chain(5_000)), "grammar", "5002 rules (limit 2000)")
    assert completion(server, grammar=rule_chain(1_500)).status_code == 200
    assert_alive(server)


def test_repetitions_met_only_while_sampling_are_400s_up_front(server: ServerProcess) -> None:
    """These answered 500 inference_error once the first token was sampled."""
    assert_400(chat(server, response_format=schema_format({"type": "string", "pattern": "a{1000000000}"})),
               "response_format", "{1000000000}", "limit of 10000")
    assert_400(completion(server, grammar='root ::= "a"{1000000000}'), "grammar", "limit of 10000")
    assert_alive(server)


@pytest.mark.parametrize("schema", [
    {"$ref": "#"},
    {"$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"},
])
def test_ref_cycles_that_admit_no_document_are_400s(server: ServerProcess, schema: dict[str, Any]) -> None:
    """They answered 200 with empty output."""
    assert_400(chat(server, response_format=schema_format(schema)), "response_format")
    cycle_in_lark = '%json {"$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"$ref": "#/$defs/a"}}, ' \
                    '"$ref": "#/$defs/a"}'
    assert_400(completion(server, grammar=f"start: {cycle_in_lark}\n"), "grammar")
    assert_alive(server)
