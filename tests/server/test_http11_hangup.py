"""HTTP/1.1 pipelining and hang-ups (issue 27, item 1): a client that pipelines requests
and closes its connection gets every one of them cancelled, past the 16 KiB read-ahead
bound too (where the server stops reading the connection and must watch the socket for
the hang-up). Before, the request in progress ran to its end and each request queued
behind it was then started and answered for nobody (4 connections held 4 slots for
minutes). Raw sockets; the outcome is read from the engine's counters and /metrics."""
from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from kolosal.server.connections import peer_hung_up

from ..server_process import ENGINE, ServerProcess, start_server, stop_server
from ..waiting import until

SLOTS = 4
SETTLE_S = 120.0
PADDING = "x" * 4000  # each request ~4.2 KB: a long `user` field, no prompt work


@pytest.fixture(scope="module")
def server(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    running = start_server(model_path, tmp_path_factory.mktemp("hangup") / "server.log",
                           "--parallel", str(SLOTS))
    yield running
    stop_server(running)


def stats(server: ServerProcess) -> dict[str, Any]:
    status = httpx.get(f"{server.base_url}/engines/{ENGINE}/status", timeout=SETTLE_S).json()
    return dict(status["stats"])


def completions_with_status(server: ServerProcess, status: int) -> float:
    total = 0.0
    for line in httpx.get(f"{server.base_url}/metrics", timeout=SETTLE_S).text.splitlines():
        if (line.startswith("kolosal_requests_total{") and f'status="{status}"' in line
                and "completions" in line):
            total += float(line.rsplit(" ", 1)[1])
    return total


def pipelined(server: ServerProcess, count: int) -> bytes:
    """``count`` long non-streamed completions, back to back, as one write."""
    body = json.dumps({"model": ENGINE, "prompt": "Count to a thousand:", "max_tokens": 600,
                       "ignore_eos": True, "user": PADDING}).encode()
    head = (f"POST /v1/completions HTTP/1.1\r\nHost: {urlsplit(server.base_url).netloc}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    return (head + body) * count


def server_side_open(server: ServerProcess, client_ports: set[int]) -> list[str]:
    """The server's ends of these connections that it has not closed yet (ESTABLISHED, or
    CLOSE_WAIT: the client's FIN came and the server still holds the connection)."""
    server_port = urlsplit(server.base_url).port
    found = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, remote, state = line.split()[1:4]
        if (int(local.split(":")[1], 16) == server_port
                and int(remote.split(":")[1], 16) in client_ports and state in ("01", "08")):
            found.append(f"{local}->{remote} state {state}")
    return found


@pytest.mark.parametrize("per_connection", [3, 12], ids=["under-16KiB", "over-16KiB"])
def test_pipelined_requests_end_with_their_connection(server: ServerProcess,
                                                      per_connection: int) -> None:
    """SLOTS connections each pipeline long completions (~12 KB: read ahead in full; ~50 KB:
    reading stops at 16 KiB) and close once their first request holds a slot. Each
    connection's running request is cancelled, no request queued behind it starts, and the
    server closes its end; the engine is then idle and serves a new client."""
    before = stats(server)
    ok_before, gone_before = completions_with_status(server, 200), completions_with_status(server, 499)
    payload = pipelined(server, per_connection)
    assert (len(payload) > 16 * 1024) == (per_connection == 12)
    port = urlsplit(server.base_url).port
    assert port is not None
    sockets = [socket.create_connection(("127.0.0.1", port)) for _ in range(SLOTS)]
    ports = {sock.getsockname()[1] for sock in sockets}
    try:
        for sock in sockets:
            sock.sendall(payload)
        until(lambda: stats(server)["slots_busy"] == SLOTS, SETTLE_S,
              what="every connection's first request in a slot")
    finally:
        for sock in sockets:
            sock.close()

    def settled() -> bool:
        now = stats(server)
        return (now["requests_cancelled"] - before["requests_cancelled"] >= SLOTS
                and now["slots_busy"] == 0 and now["queue_depth"] == 0)
    until(settled, SETTLE_S, what="the closed connections' requests cancelled, the engine idle")
    until(lambda: not server_side_open(server, ports), SETTLE_S,
          what="the server closing its end of each connection")

    # A new client is served; by then nothing queued on the closed connections has run.
    response = httpx.post(f"{server.base_url}/v1/completions", timeout=SETTLE_S,
                          json={"model": ENGINE, "prompt": "Hello", "max_tokens": 3})
    assert response.status_code == 200, response.text
    after = stats(server)
    assert after["requests_cancelled"] - before["requests_cancelled"] == SLOTS, after
    assert after["requests_finished"] - before["requests_finished"] == 1, after  # the new client
    assert after["slots_busy"] == 0 and after["queue_depth"] == 0, after
    assert completions_with_status(server, 499) - gone_before == SLOTS
    assert completions_with_status(server, 200) - ok_before == 1


def test_a_hang_up_is_seen_behind_unread_bytes() -> None:
    """The check the server makes while it no longer reads a connection: the peer's FIN
    (or reset) is seen with the pipelined bytes before it still unread."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        accepted, _ = listener.accept()
        with accepted:
            client.sendall(b"x" * 100_000)
            assert not peer_hung_up(accepted.fileno())  # still there
            client.close()
            until(lambda: peer_hung_up(accepted.fileno()), what="the FIN seen")
            assert accepted.recv(10) == b"xxxxxxxxxx"  # the bytes were not consumed
    assert not peer_hung_up(-1)  # no socket known: never "gone"
