"""Keys with identities on a real server (--keys-file): which engines a key sees, admin
routes, per-key limits with OpenAI's 429 answer and headers (the openai SDK retries on its
own and succeeds), per-key metrics, keys never logged, and SIGHUP reloading the file."""
from __future__ import annotations

import asyncio
import hashlib
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from ..server_process import ENGINE, ServerProcess, start_server, stop_server
from ..waiting import until

KEYS = """
keys:
  - name: team-a
    key: sk-team-a-secret
    models: [gemma]
  - name: team-b
    key_sha256: {team_b_digest}
    models: [some-other-engine]
  - name: rpm-key
    key: sk-rpm-limited
    rpm: 2
  - name: busy-key
    key: sk-one-at-a-time
    max_concurrent: 1
  - name: token-key
    key: sk-token-limited
    tpm: 120
  - name: ops
    key: sk-admin-secret
    admin: true
  - name: adapter-key
    key: sk-adapter-default
    lora: [{{id: 3, scale: 1.0}}]
"""
SECRETS = ("sk-team-a-secret", "sk-team-b-secret", "sk-rpm-limited", "sk-one-at-a-time",
           "sk-token-limited", "sk-admin-secret", "sk-adapter-default")


def write_keys(path: Path, extra: str = "") -> None:
    digest = hashlib.sha256(b"sk-team-b-secret").hexdigest()
    path.write_text(KEYS.format(team_b_digest=digest) + extra)


@pytest.fixture(scope="module")
def keys_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("keys") / "keys.yaml"
    write_keys(path)
    return path


@pytest.fixture(scope="module")
def tenant_server(model_path: Path, keys_file: Path,
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    running = start_server(model_path, tmp_path_factory.mktemp("tenants") / "server.log",
                           "--keys-file", str(keys_file), "--parallel", "4")
    yield running
    stop_server(running)


def chat(server: ServerProcess, key: str, max_tokens: int = 4, **extra: object) -> httpx.Response:
    return httpx.post(f"{server.base_url}/v1/chat/completions", timeout=120,
                      headers={"Authorization": f"Bearer {key}"},
                      json={"model": ENGINE, "max_tokens": max_tokens, "temperature": 0,
                            "messages": [{"role": "user", "content": "Hello"}], **extra})


def test_a_key_sees_only_its_engines(tenant_server: ServerProcess) -> None:
    base = tenant_server.base_url
    a = {"Authorization": "Bearer sk-team-a-secret"}
    b = {"Authorization": "Bearer sk-team-b-secret"}
    assert [m["id"] for m in httpx.get(f"{base}/v1/models", headers=a).json()["data"]] == [ENGINE]
    assert httpx.get(f"{base}/v1/models", headers=b).json()["data"] == []
    hidden = httpx.get(f"{base}/v1/models/{ENGINE}", headers=b)
    assert hidden.status_code == 404 and hidden.json()["error"]["code"] == "model_not_found"
    refused = chat(tenant_server, "sk-team-b-secret")
    assert refused.status_code == 404 and refused.json()["error"]["code"] == "model_not_found"
    assert chat(tenant_server, "sk-team-a-secret").status_code == 200


def test_unknown_or_missing_keys_are_refused(tenant_server: ServerProcess) -> None:
    assert chat(tenant_server, "sk-team-a-secreT").status_code == 401
    missing = httpx.get(f"{tenant_server.base_url}/v1/models")
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "invalid_api_key"


def test_only_an_admin_key_manages_engines(tenant_server: ServerProcess) -> None:
    url = f"{tenant_server.base_url}/engines"
    body = {"engine_id": "x", "model_path": "/nonexistent.gguf"}
    as_user = httpx.post(url, json=body, headers={"Authorization": "Bearer sk-team-a-secret"})
    assert as_user.status_code == 403 and as_user.json()["error"]["code"] == "admin_key_required"
    as_admin = httpx.post(url, json=body, headers={"Authorization": "Bearer sk-admin-secret"})
    assert as_admin.status_code not in (401, 403)  # past auth: the path is what is wrong


def test_requests_per_minute_get_openais_429_and_headers(tenant_server: ServerProcess) -> None:
    first = chat(tenant_server, "sk-rpm-limited")
    assert first.status_code == 200
    assert first.headers["x-ratelimit-limit-requests"] == "2"
    assert first.headers["x-ratelimit-remaining-requests"] == "1"
    assert chat(tenant_server, "sk-rpm-limited").status_code == 200
    refused = chat(tenant_server, "sk-rpm-limited")
    assert refused.status_code == 429
    error = refused.json()["error"]
    assert error["code"] == "rate_limit_exceeded" and error["type"] == "requests"
    assert 1 <= int(refused.headers["Retry-After"]) <= 60 and int(refused.headers["retry-after-ms"]) > 0
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert refused.headers["x-ratelimit-reset-requests"].endswith("s")


def test_tokens_per_minute_are_reserved_then_settled(tenant_server: ServerProcess) -> None:
    too_big = chat(tenant_server, "sk-token-limited", max_tokens=500)
    assert too_big.status_code == 429 and too_big.json()["error"]["type"] == "tokens"
    small = chat(tenant_server, "sk-token-limited", max_tokens=3)
    assert small.status_code == 200
    used = small.json()["usage"]["total_tokens"]
    assert int(small.headers["x-ratelimit-limit-tokens"]) == 120
    # the reservation (prompt + 3) was settled to what was used by the time of the next answer
    after = httpx.get(f"{tenant_server.base_url}/v1/models",
                      headers={"Authorization": "Bearer sk-token-limited"})
    assert int(after.headers["x-ratelimit-remaining-tokens"]) == 120 - used


def test_the_openai_sdk_retries_a_busy_key_and_succeeds(tenant_server: ServerProcess) -> None:
    client = openai.AsyncOpenAI(base_url=f"{tenant_server.base_url}/v1", api_key="sk-one-at-a-time",
                                max_retries=5)

    async def ask(index: int) -> str:
        completion = await client.chat.completions.create(
            model=ENGINE, max_tokens=24, temperature=0,
            messages=[{"role": "user", "content": f"Count to ten, take {index}"}])
        return completion.choices[0].finish_reason or ""

    async def both() -> list[str]:
        try:
            return list(await asyncio.gather(ask(1), ask(2)))
        finally:
            await client.close()

    assert asyncio.run(both()) == ["length", "length"]
    metrics = httpx.get(f"{tenant_server.base_url}/metrics",
                        headers={"Authorization": "Bearer sk-admin-secret"}).text
    assert 'kolosal_key_requests_total{key="busy-key",status="429"}' in metrics
    assert 'kolosal_key_requests_total{key="busy-key",status="200"} 2.0' in metrics
    assert 'kolosal_key_tokens_total{key="busy-key",kind="completion"} 48.0' in metrics


def test_a_request_priority_is_checked(tenant_server: ServerProcess) -> None:
    assert chat(tenant_server, "sk-team-a-secret", priority=-5).status_code == 200
    bad = chat(tenant_server, "sk-team-a-secret", priority=5000)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "priority"


def test_a_keys_default_lora_set_applies_to_requests_that_name_none(tenant_server: ServerProcess) -> None:
    # this engine has no adapters: the key's default (adapter 3) is refused, naming lora,
    # which proves it was applied; a request's own set (none at all) wins over it
    refused = chat(tenant_server, "sk-adapter-default")
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "lora"
    assert chat(tenant_server, "sk-adapter-default", lora=[]).status_code == 200


def test_keys_are_never_logged_but_their_names_are(tenant_server: ServerProcess) -> None:
    chat(tenant_server, "sk-team-a-secret")
    log = tenant_server.log()
    assert not any(secret in log for secret in SECRETS)
    assert "team-a" in log


def test_sighup_reloads_the_keys_file_and_a_bad_file_keeps_the_old_keys(
        tenant_server: ServerProcess, keys_file: Path) -> None:
    write_keys(keys_file, "  - name: late\n    key: sk-late-arrival\n")
    tenant_server.process.send_signal(signal.SIGHUP)
    until(lambda: chat(tenant_server, "sk-late-arrival").status_code == 200, timeout_s=30,
          what="the new key")
    keys_file.write_text("keys: [{name: broken}]")
    tenant_server.process.send_signal(signal.SIGHUP)
    until(lambda: "keys not reloaded" in tenant_server.log(), timeout_s=30, what="the refusal")
    assert chat(tenant_server, "sk-late-arrival").status_code == 200  # the old keys stay
    write_keys(keys_file)
    tenant_server.process.send_signal(signal.SIGHUP)
    until(lambda: chat(tenant_server, "sk-late-arrival").status_code == 401, timeout_s=30,
          what="the key's removal")


def test_a_bad_keys_file_stops_the_server_at_start(model_path: Path, tmp_path: Path) -> None:
    bad = tmp_path / "keys.yaml"
    bad.write_text("keys: [{name: a, key: short}]")
    with pytest.raises(RuntimeError, match="keys file"):
        start_server(model_path, tmp_path / "server.log", "--keys-file", str(bad))
