"""Prompts rendered exactly as llama-server renders them (issue 23): for the instruct model's
own template and every template fixture under tests/toolcalls/templates, the prompt tokens
we build for a conversation (tools included where the template renders them) equal what
llama-server makes of the same messages: ``/apply-template`` then ``/tokenize``, jinja on.

Runs where llama-server is built (``python build_llama.py --with-server``); skipped with that
reason elsewhere. Where they differ on purpose (a template without tool support: we describe
the tools in our own system block, llama-server in its generic one) the case is not
compared; README says why."""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from benchmarks.servers import ServerSettings, find_llama_server, llama_server_spec, running
from kolosal.chat_template import ChatTemplate

pytestmark = pytest.mark.model  # every test here needs the model: the pure lane skips the file

LLAMA_SERVER = find_llama_server()
FIXTURES = sorted((Path(__file__).parent.parent / "toolcalls" / "templates").glob("*.jinja"))
CONVERSATION = [{"role": "system", "content": "You are brief."},
                {"role": "user", "content": "Hello!"},
                {"role": "assistant", "content": "Hi. How can I help?"},
                {"role": "user", "content": "What is the weather in Paris?"}]
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
skip_without_server = pytest.mark.skipif(
    LLAMA_SERVER is None, reason="llama-server is not built (python build_llama.py --with-server)")


@pytest.fixture(scope="module")
def instruct_model(instruct_model_path: Path) -> Iterator[Any]:
    from kolosal.llama import Model, ModelParams

    with Model(instruct_model_path, ModelParams(n_gpu_layers=0, no_alloc=True, use_mmap=False)) as model:
        yield model


def ours(model: Any, template_text: str | None, tools: list[dict[str, Any]] | None) -> list[int]:
    """What the chat route builds (routes_openai.tokenize_chat): the template's text, parsed
    with special tokens, a BOS added only when the text does not start with one."""
    vocab = model.vocab
    bos = vocab.token_to_piece(vocab.bos, special=True).decode() if vocab.bos >= 0 else ""
    eos = vocab.token_to_piece(vocab.eos, special=True).decode() if vocab.eos >= 0 else ""
    template = ChatTemplate.for_model(template_text or model.chat_template, "llama", bos, eos)
    prompt = template.render(CONVERSATION, tools=tools)
    add_special = not (bos and prompt.startswith(bos))
    return list(vocab.tokenize(prompt, add_special=add_special, parse_special=True))


def theirs(url: str, tools: list[dict[str, Any]] | None) -> list[int]:
    body: dict[str, Any] = {"messages": CONVERSATION, **({"tools": TOOLS} if tools else {})}
    prompt = httpx.post(f"{url}/apply-template", json=body, timeout=60).json()["prompt"]
    tokens = httpx.post(f"{url}/tokenize", json={"content": prompt, "add_special": True,
                                                 "parse_special": True}, timeout=60).json()["tokens"]
    return [int(token) for token in tokens]


@skip_without_server
@pytest.mark.parametrize("fixture", [None, *FIXTURES], ids=["smollm2-own", *(f.stem for f in FIXTURES)])
def test_prompt_tokens_equal_llama_servers(fixture: Path | None, instruct_model: Any,
                                           instruct_model_path: Path) -> None:
    assert LLAMA_SERVER is not None
    settings = ServerSettings(instruct_model_path, threads=os.cpu_count() or 1, n_ctx=2048, parallel=1)
    spec = llama_server_spec(settings, LLAMA_SERVER)
    extra = ("--jinja", *(("--chat-template-file", str(fixture)) if fixture else ()))
    spec = dataclasses.replace(spec, command=(*spec.command, *extra))
    text = fixture.read_text() if fixture else None
    template = ChatTemplate.for_model(text or instruct_model.chat_template, "llama", "", "")
    with running(spec) as url:
        assert ours(instruct_model, text, None) == theirs(url, None)
        if template.renders_tools:  # otherwise each side describes tools its own way
            assert ours(instruct_model, text, TOOLS) == theirs(url, TOOLS)
