"""Hostile model files through the HTTP API (issue 16, holes 1, 2 and the path part of 7):
each is one 400 naming ``model_path``, while the server's other engine keeps streaming and a
valid load issued at the same time succeeds.

Before: the block_count files killed the server (SIGABRT inside libllama), the GiB-array
file took the load lock for minutes (and was then loaded), a FIFO froze the event loop (its
header was read there), and a NUL byte or a symlink loop in model_path answered 500."""
from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import httpx
import pytest

from ..server_process import ENGINE, ServerProcess
from . import crafted_gguf as craft

pytestmark = pytest.mark.model  # every test here needs the model: the pure lane skips the file

GIB = 1 << 30
LONG = httpx.Timeout(180.0)


def assert_model_path_error(response: httpx.Response, code: str, *fragments: str) -> str:
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "model_path" and error["code"] == code, error
    for fragment in fragments:
        assert fragment in error["message"], error
    return str(error["message"])


async def stream_while(client: httpx.AsyncClient, during: asyncio.Future[httpx.Response],
                       max_tokens: int = 32) -> list[dict]:
    """Stream a completion from the server's engine; once its first token is in, let
    ``during`` run; return every event of the stream, which must end with [DONE]."""
    body = {"model": ENGINE, "prompt": "Once upon a time", "max_tokens": max_tokens,
            "ignore_eos": True, "temperature": 0, "stream": True}
    events: list[dict] = []
    async with client.stream("POST", "/v1/completions", json=body) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                return events
            events.append(json.loads(line[len("data: "):]))
            if len(events) == 1:
                await asyncio.wait_for(asyncio.shield(during), LONG.read)
    raise AssertionError("the stream ended without [DONE]")


def assert_finished_normally(events: list[dict], max_tokens: int = 32) -> None:
    assert all("error" not in event for event in events), events[-1]
    assert events[-1]["choices"][0]["finish_reason"] == "length"


@pytest.mark.parametrize("block_count", [0, 100_000])
async def test_a_file_that_aborts_libllama_is_a_400_while_a_stream_goes_on(
        server: ServerProcess, model_path: Path, tmp_path: Path, block_count: int) -> None:
    bad = craft.with_value(model_path, tmp_path / f"block_count_{block_count}.gguf",
                           craft.block_count_key(model_path), block_count)
    async with httpx.AsyncClient(base_url=server.base_url, timeout=LONG) as client:
        load = asyncio.ensure_future(client.post("/engines", json={"engine_id": "crafted",
                                                                   "model_path": str(bad)}))
        events = await stream_while(client, load)
        assert_model_path_error(await load, "invalid_model_file", "SIGABRT", "GGML_ASSERT")
        assert_finished_normally(events)
        assert server.process.poll() is None
        listed = (await client.get("/v1/engines")).json()["data"]
        assert [e["engine_id"] for e in listed if e["engine_id"] == "crafted"] == []
        # asked again: the remembered verdict, no second child
        assert_model_path_error(await client.post("/engines", json={"engine_id": "crafted",
                                                                    "model_path": str(bad)}),
                                "invalid_model_file", "GGML_ASSERT")
    assert server.log().count(f"model file check of {bad.name}") == 1


HOSTILE = {
    "two-1GiB-u8-arrays": lambda src, dst: craft.with_extra_arrays(
        src, dst, [craft.u8_array("junk.a", GIB), craft.u8_array("junk.b", GIB)]),
    "512MiB-string-array": lambda src, dst: craft.with_extra_arrays(
        src, dst, [craft.empty_strings_array("junk.s", 64 << 20)]),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
async def test_hostile_metadata_is_a_400_while_a_valid_load_succeeds(
        server: ServerProcess, model_path: Path, tmp_path: Path, name: str) -> None:
    hostile = HOSTILE[name](model_path, tmp_path / f"{name}.gguf")
    async with httpx.AsyncClient(base_url=server.base_url, timeout=LONG) as client:
        refused, valid = await asyncio.gather(
            client.post("/engines", json={"engine_id": "hostile", "model_path": str(hostile)}),
            client.post("/engines", json={"engine_id": "valid", "model_path": str(model_path),
                                          "n_ctx": 256, "n_parallel": 1}))
        try:
            assert valid.status_code == 201, valid.text
            assert_model_path_error(refused, "invalid_model_file", "implausible GGUF metadata")
        finally:
            await client.delete("/engines/valid")


async def test_fifo_and_stdin_are_400_and_nothing_blocks(server: ServerProcess, tmp_path: Path) -> None:
    fifo = tmp_path / "x.gguf"
    os.mkfifo(fifo)
    async with httpx.AsyncClient(base_url=server.base_url, timeout=httpx.Timeout(60.0)) as client:
        assert_model_path_error(await client.post("/engines", json={"engine_id": "fifo",
                                                                    "model_path": str(fifo)}),
                                "invalid_model_file", "not a regular file")
        stdin = await client.post("/engines", json={"engine_id": "stdin", "model_path": "/dev/stdin"})
        if stdin.status_code != 404:  # 404: the server was started with stdin closed
            assert_model_path_error(stdin, "invalid_model_file")
        assert (await client.get("/v1/health")).status_code == 200


async def test_nul_byte_and_symlink_loop_are_400_naming_model_path(server: ServerProcess,
                                                                  tmp_path: Path) -> None:
    (tmp_path / "a.gguf").symlink_to(tmp_path / "b.gguf")
    (tmp_path / "b.gguf").symlink_to(tmp_path / "a.gguf")
    async with httpx.AsyncClient(base_url=server.base_url, timeout=httpx.Timeout(60.0)) as client:
        for path in (str(tmp_path / "model\0.gguf"), str(tmp_path / "a.gguf"),
                     str(tmp_path / "a.gguf" / "inside.gguf")):
            response = await client.post("/engines", json={"engine_id": "x", "model_path": path})
            assert response.status_code == 400, (path, response.text)
            assert response.json()["error"]["param"] == "model_path"
