"""The workload generators (pure) and a bounded smoke run of each workload against our
server (and llama-server where it is built). No timing assertions."""
from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from benchmarks.compare import parse_args, parse_ours
from benchmarks.documents import CHAT_SYSTEM_PROMPT, CHAT_TURNS, DOCUMENTS, echo_prompt, typos
from benchmarks.loadgen import LoadConfig, cached_tokens, request_body, run_level
from benchmarks.metrics import LevelResult, RequestRecord, summarize
from benchmarks.plots import plot_comparison
from benchmarks.prompts import long_prompt
from benchmarks.report import markdown_spread, ratio_table, spread
from benchmarks.servers import ServerSettings, find_llama_server, llama_server_spec, running, server_specs
from benchmarks.workloads import CHAT, COMPLETIONS, WORKLOADS, Call, calls, chat_session, workload

from ..server_process import ENGINE, ServerProcess


def test_chat_session_resends_the_whole_history() -> None:
    made = calls(chat_session(3), lambda call: f"reply {len(call.body['messages'])}")
    assert len(made) == CHAT_TURNS and all(call.path == CHAT for call in made)
    for turn, call in enumerate(made):
        messages = call.body["messages"]
        assert messages[0] == {"role": "system", "content": CHAT_SYSTEM_PROMPT}
        assert len(messages) == 2 + 2 * turn and messages[-1]["role"] == "user"
        if turn:  # the previous call's messages, its reply, then one new user message
            previous = made[turn - 1].body["messages"]
            assert messages[:len(previous)] == previous
            assert messages[len(previous)] == {"role": "assistant", "content": f"reply {len(previous)}"}


def test_chat_sessions_share_only_the_system_prompt() -> None:
    first = [next(chat_session(index, seed)).body["messages"] for index, seed in ((0, 0), (1, 0), (0, 1))]
    assert all(messages[0] == first[0][0] for messages in first)
    assert len({messages[1]["content"] for messages in first}) == 3


def test_echo_prompts_end_in_the_start_of_a_copy() -> None:
    prompts = [echo_prompt(index) for index in range(4 * len(DOCUMENTS))]
    assert len(set(prompts)) == len(prompts)
    for index, prompt in enumerate(prompts):
        document = DOCUMENTS[index % len(DOCUMENTS)]
        first_line = document.split("\n", 1)[0]
        assert prompt.endswith(f"\n{first_line}\n")
        if "Fix the typos" in prompt:
            assert typos(document, index) in prompt and typos(document, index) != document
        else:
            assert document in prompt
    assert typos("plain words", 1, share=0.0) == "plain words"


def test_workloads_by_name() -> None:
    assert set(WORKLOADS) == {"short", "mixed", "chat", "echo"}
    longs = [len(calls(workload("mixed").sessions(i, 0), str)[0].body["prompt"]) > 2000 for i in range(1000)]
    assert 60 <= sum(longs) <= 140  # 10 % of the requests carry the ~1k-token document
    short = calls(workload("short").sessions(5, 0), str)
    assert len(short) == 1 and short[0].path == COMPLETIONS and len(short[0].body["prompt"]) < 200
    assert calls(workload("short", endpoint="chat").sessions(5, 0), str)[0].path == CHAT
    assert calls(workload("short", long_fraction=1.0).sessions(5, 0), str)[0].body["prompt"] == long_prompt(5)
    assert calls(workload("echo").sessions(7, 0), str)[0].body["prompt"] == echo_prompt(7)
    with pytest.raises(ValueError, match="unknown workload"):
        workload("nope")


def test_request_bodies() -> None:
    config = LoadConfig(url="http://127.0.0.1:1", model="m", logprobs=5, n=4, max_tokens=9)
    path, body = request_body(config, Call(CHAT, {"messages": []}))
    assert path == CHAT and (body["logprobs"], body["top_logprobs"], body["n"]) == (True, 5, 4)
    assert body["ignore_eos"] and body["stream"] and body["max_tokens"] == 9 and body["model"] == "m"
    _, body = request_body(LoadConfig(url="http://127.0.0.1:1", model="m", logprobs=5),
                           Call(COMPLETIONS, {"prompt": "x"}))
    assert body["logprobs"] == 5 and "top_logprobs" not in body and "n" not in body
    with pytest.raises(ValueError, match="workload"):
        LoadConfig(url="http://127.0.0.1:1", model="m", workload="nope")


def test_cached_tokens_from_either_server() -> None:
    assert cached_tokens({"usage": {"prompt_tokens": 9, "prompt_tokens_details": {"cached_tokens": 7}}}) == 7
    assert cached_tokens({"timings": {"cache_n": 5, "prompt_n": 3}}) == 5  # llama-server's timings
    assert cached_tokens({"choices": []}) is None


def test_spread_tables_and_cached_share() -> None:
    records = [RequestRecord(ok=True, ttft_s=0.1, latency_s=0.5, completion_tokens=4, prompt_tokens=100,
                             cached_tokens=60)]
    one = summarize(2, records, 1.0)
    assert (one.prompt_tokens, one.cached_tokens, one.cached_share) == (100, 60, 0.6)
    runs = {"kolosal": [[one, summarize(2, records, 2.0)]], "llama-server": [[summarize(2, records, 4.0)]]}
    table = markdown_spread(runs)
    assert "| 2 | kolosal | 3.0 (2.0–4.0) |" in table and "ratio kolosal/llama-server | 3.00x" in table
    assert spread([1.0, 5.0, 2.0], "{:.1f}") == "2.0 (1.0–5.0)" and spread([3.0], "{:.0f}") == "3"
    assert "prefix cache" in ratio_table({"kolosal": [one]})


def test_compare_arguments_follow_the_workload() -> None:
    args = parse_args(["--workload", "chat"])
    assert (args.n_ctx, args.peer_kv_unified, args.max_tokens) == (32768, True, 64)
    assert args.out == Path("benchmarks/out/chat")
    args = parse_args(["--workload", "echo", "--levels", "1", "--max-tokens", "32", "--n-ctx", "1024"])
    assert (args.levels, args.max_tokens, args.n_ctx) == ([1], 32, 1024)
    assert parse_ours(['nospec=--spec-draft-max 0 --n-batch 256']) == {
        "nospec": ("--spec-draft-max", "0", "--n-batch", "256")}
    with pytest.raises(SystemExit):
        parse_ours(["kolosal=--x"])


def test_peer_configurations(model_path: Path) -> None:
    settings = ServerSettings(model=model_path, threads=2, n_ctx=512, parallel=2, peer_kv_unified=True,
                              peer_chat_template="gemma")
    spec = llama_server_spec(settings, Path("/bin/llama-server"), "ngram-mod")
    assert spec.name == "llama-server+ngram-mod"
    assert spec.command[-5:] == ("--no-jinja", "--chat-template", "gemma", "--spec-type", "ngram-mod")
    assert "--kv-unified" in spec.command
    specs = server_specs(settings, (), None, {"kolosal": (), "nospec": ("--spec-draft-max", "0")})
    assert [s.name for s in specs] == ["kolosal", "nospec"]
    assert specs[1].command[-2:] == ("--spec-draft-max", "0")


@pytest.mark.parametrize("name", ["mixed", "chat", "echo"])
async def test_each_workload_against_our_server(server: ServerProcess, name: str) -> None:
    config = LoadConfig(url=server.base_url, model=ENGINE, max_tokens=4, workload=name,
                        long_fraction=0.5 if name == "mixed" else 0.0)
    result = await run_level(config, concurrency=2, num_sessions=2, progress=False)
    per_session = WORKLOADS[name].calls_per_session
    assert result.requests == 2 * per_session and result.errors == 0, result.error_samples
    assert result.output_tokens == 4 * result.requests and result.ttft_p50_ms > 0
    if name == "chat":  # every later turn reuses at least the shared system prompt
        assert result.cached_tokens > (per_session - 1) * 2 * 300, result
    else:
        assert result.prompt_tokens > 2 * 150


async def test_logprobs_and_choices_on_every_request(server: ServerProcess) -> None:
    config = LoadConfig(url=server.base_url, model=ENGINE, max_tokens=3, logprobs=5, n=2)
    result = await run_level(config, concurrency=2, num_sessions=2, progress=False)
    assert result.errors == 0, result.error_samples
    assert result.output_tokens == 2 * 2 * 3  # n choices counted in usage


def test_chat_on_fresh_servers_reports_cache_hits(model_path: Path, tmp_path: Path) -> None:
    """One conversation against ours and llama-server (where built) as compare.py starts
    them: both report prefix-cache hits from the second turn on."""
    settings = ServerSettings(model=model_path, threads=2, n_ctx=4096, parallel=2, peer_kv_unified=True,
                              peer_chat_template="gemma")
    peers = ("llama-server",) if find_llama_server() else ()
    results: dict[str, list[LevelResult]] = {}
    for spec in server_specs(settings, peers):
        with running(spec, tmp_path / f"{spec.name}.log") as url:
            config = LoadConfig(url=url, model=spec.model_id, max_tokens=3, workload="chat")
            results[spec.name] = [asyncio.run(run_level(config, 1, 1, progress=False))]
    for name, rows in results.items():
        row = rows[0]
        assert row.errors == 0 and row.requests == CHAT_TURNS, (name, row.error_samples)
        assert row.cached_share > 0.5, (name, row)
    written = plot_comparison(results, {}, tmp_path / "plots", workload="chat")
    assert all(path.stat().st_size > 0 for path in written)
