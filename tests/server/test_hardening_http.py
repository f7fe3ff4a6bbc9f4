"""HTTP hardening against a real server (issue 16, items 3, 6 and 7): clients that are gone
when their request arrives (HTTP/2 rapid reset, CVE-2023-44487, and HTTP/1.1 send-and-close)
cost nothing, reset floods get GOAWAY, one HTTP/2 connection carries any number of requests,
POST bodies must be JSON, a server without keys refuses foreign origins and hosts, and
integers that would reach C are refused at the edge. Raw frames come from the h2 package."""
from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.settings
import httpx
import pytest

from kolosal.config import ServerSettings
from kolosal.engine import EngineRegistry
from kolosal.server.app import create_app
from kolosal.server.connections import MAX_HEADER_BYTES, RESET_BURST
from kolosal.server.openapi import openapi_document

from ..server_process import ENGINE, ServerProcess, start_server, stop_server, wait_idle

LONG_COMPLETION = {"model": ENGINE, "prompt": "Count to a thousand:", "max_tokens": 300,
                   "ignore_eos": True}
SETTLE_S = 120.0  # generous bound for the server to settle on a loaded machine


def address(base_url: str) -> tuple[str, int]:
    parts = urlsplit(base_url)
    assert parts.hostname is not None and parts.port is not None
    return parts.hostname, parts.port


class RawH2:
    """One cleartext HTTP/2 connection (prior knowledge) whose frames the test controls."""

    def __init__(self, base_url: str) -> None:
        parts = urlsplit(base_url)
        self.authority = parts.netloc
        self.sock = socket.create_connection(address(base_url), timeout=SETTLE_S)
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.closed = False
        self.terminated: h2.events.ConnectionTerminated | None = None  # the server's GOAWAY
        self.conn.initiate_connection()
        self.flush()

    def open(self, method: str, path: str, body: bytes | None = None, reset: bool = False) -> int:
        """Queue one request (and its reset); nothing is sent until flush()."""
        stream_id = self.conn.get_next_available_stream_id()
        headers = [(":method", method), (":path", path), (":scheme", "http"),
                   (":authority", self.authority)]
        if body is not None:
            headers.append(("content-type", "application/json"))
        self.conn.send_headers(stream_id, headers, end_stream=body is None)
        if body is not None:
            self.conn.send_data(stream_id, body, end_stream=True)
        if reset:
            self.conn.reset_stream(stream_id, h2.errors.ErrorCodes.CANCEL)
        return stream_id

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data and not self.closed:
            try:
                self.sock.sendall(data)
            except OSError:  # the server closed the connection: read what it sent last
                pass

    def receive(self) -> list[h2.events.Event]:
        """The events of one read; [] once the connection is closed."""
        try:
            data = self.sock.recv(65536)
        except OSError:
            data = b""
        if not data:
            self.closed = True
            return []
        events = self.conn.receive_data(data)
        for event in events:
            if isinstance(event, h2.events.DataReceived):
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.ConnectionTerminated):
                self.terminated = event
        self.flush()
        return events

    def round_trip(self) -> bool:
        """PING and read up to its ACK (all sent before it was handled): False when the
        connection ended first."""
        self.conn.ping(b"kolosal!")
        self.flush()
        while not self.closed and self.terminated is None:
            if any(isinstance(e, h2.events.PingAckReceived) for e in self.receive()):
                return self.terminated is None
        return False

    def close(self) -> None:
        self.sock.close()


def requests_with_status(base_url: str, status: int, endpoint: str = "completions") -> float:
    """kolosal_requests_total summed over the labels that match."""
    total = 0.0
    for line in httpx.get(f"{base_url}/metrics", timeout=SETTLE_S).text.splitlines():
        if (line.startswith("kolosal_requests_total{") and f'status="{status}"' in line
                and endpoint in line):
            total += float(line.rsplit(" ", 1)[1])
    return total


def wait_for(condition: object, timeout: float = SETTLE_S, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return True
        time.sleep(interval)
    return bool(condition())  # type: ignore[operator]


def assert_idle_and_serving(server: ServerProcess) -> None:
    stats = wait_idle(server.base_url, timeout=SETTLE_S)["stats"]
    assert stats["slots_busy"] == 0 and stats["queue_depth"] == 0, stats
    response = httpx.post(f"{server.base_url}/v1/completions", timeout=SETTLE_S,
                          json={"model": ENGINE, "prompt": "Hello", "max_tokens": 3})
    assert response.status_code == 200, response.text


@pytest.fixture(scope="module")
def hardened(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server of its own: the attacks below must not slow other modules' tests."""
    running = start_server(model_path, tmp_path_factory.mktemp("hardening") / "server.log",
                           "--parallel", "4")
    yield running
    stop_server(running)


# -- item 3: clients gone on arrival ---------------------------------------------------------
def test_h2_rapid_reset_costs_nothing_and_others_are_served(hardened: ServerProcess) -> None:
    """150 streams opened and reset in one write: none runs a generation, each is logged
    499, the engine is idle at once, and a normal client is served during and after."""
    before = requests_with_status(hardened.base_url, 499)
    normal: list[httpx.Response] = []
    during = threading.Thread(target=lambda: normal.append(httpx.post(
        f"{hardened.base_url}/v1/completions", timeout=SETTLE_S,
        json={"model": ENGINE, "prompt": "Meanwhile,", "max_tokens": 8})))
    attacker = RawH2(hardened.base_url)
    try:
        body = json.dumps(LONG_COMPLETION).encode()
        pairs = 150
        for _ in range(pairs):
            attacker.open("POST", "/v1/completions", body, reset=True)
        during.start()
        attacker.flush()
        assert attacker.round_trip()
        assert wait_for(lambda: requests_with_status(hardened.base_url, 499) - before >= pairs), \
            "the reset streams were not cancelled"
        during.join(SETTLE_S)
        assert normal and normal[0].status_code == 200, normal
        assert_idle_and_serving(hardened)
    finally:
        attacker.close()


def test_http11_send_and_close_costs_nothing(hardened: ServerProcess) -> None:
    """HTTP/1.1 twin: requests sent and closed at once end as 499, not as generations."""
    before = requests_with_status(hardened.base_url, 499)
    parts = urlsplit(hardened.base_url)
    body = json.dumps(LONG_COMPLETION).encode()
    request = (f"POST /v1/completions HTTP/1.1\r\nHost: {parts.netloc}\r\n"
               f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
    clients = 60
    for _ in range(clients):
        with socket.create_connection(address(hardened.base_url)) as sock:
            sock.sendall(request)
    assert wait_for(lambda: requests_with_status(hardened.base_url, 499) - before >= clients), \
        "the closed connections' requests were not cancelled"
    assert_idle_and_serving(hardened)


def test_http11_hangup_while_queued_frees_the_queue(hardened: ServerProcess) -> None:
    """Clients that hang up while their request waits behind others are dropped from the
    queue at once (before, a request was noticed gone only when a write failed, after its
    whole generation for a non-streaming one)."""
    before = requests_with_status(hardened.base_url, 499)
    parts = urlsplit(hardened.base_url)
    body = json.dumps(LONG_COMPLETION).encode()
    request = (f"POST /v1/completions HTTP/1.1\r\nHost: {parts.netloc}\r\n"
               f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
    sockets = [socket.create_connection(address(hardened.base_url)) for _ in range(12)]
    try:
        for sock in sockets:
            sock.sendall(request)
        assert wait_for(lambda: httpx.get(f"{hardened.base_url}/engines/{ENGINE}/status")
                        .json()["stats"]["queue_depth"] > 0), "nothing queued"
    finally:
        for sock in sockets:
            sock.close()
    assert wait_for(lambda: requests_with_status(hardened.base_url, 499) - before >= len(sockets)), \
        "the requests of clients that left were not cancelled"
    assert_idle_and_serving(hardened)


def test_reset_flood_gets_goaway(hardened: ServerProcess) -> None:
    """Past its reset budget a connection gets GOAWAY (ENHANCE_YOUR_CALM) and is closed;
    the server goes on serving everyone else."""
    attacker = RawH2(hardened.base_url)
    try:
        for _ in range(12 * RESET_BURST // 100):  # 1200 resets: a budget of 200 + 20/s
            for _ in range(100):
                attacker.open("GET", "/v1/models", reset=True)
            attacker.flush()
            if not attacker.round_trip():
                break
        while not attacker.closed:  # after GOAWAY the server closes the connection
            attacker.receive()
    finally:
        attacker.close()
    assert attacker.terminated is not None, "no GOAWAY after a reset flood"
    assert attacker.terminated.error_code == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
    assert_idle_and_serving(hardened)


def test_one_h2_connection_carries_over_a_thousand_requests(hardened: ServerProcess) -> None:
    """A client that honours MAX_CONCURRENT_STREAMS keeps one connection for 1100 requests,
    streaming completions among them. (Hypercorn's default cap of 1000 requests sent GOAWAY
    and dropped the streams in flight: the broken pipe of the 500-stream client.)"""
    client = RawH2(hardened.base_url)
    total, completions = 1100, 24
    completion = json.dumps({"model": ENGINE, "prompt": "Hi", "max_tokens": 2, "stream": True}).encode()
    statuses: dict[int, int] = {}
    try:
        limit, opened, done = 100, 0, 0
        active: set[int] = set()
        while done < total:
            while opened < total and len(active) < limit:
                if opened % (total // completions) == 0:
                    active.add(client.open("POST", "/v1/completions", completion))
                else:
                    active.add(client.open("GET", "/v1/models"))
                opened += 1
            client.flush()
            events = client.receive()
            assert events, f"connection closed after {done} of {total} requests"
            for event in events:
                if isinstance(event, h2.events.RemoteSettingsChanged):
                    changed = event.changed_settings.get(h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS)
                    if changed is not None:
                        limit = changed.new_value
                elif isinstance(event, h2.events.ResponseReceived):
                    status = int(dict(event.headers)[b":status"])
                    statuses[status] = statuses.get(status, 0) + 1
                elif isinstance(event, (h2.events.StreamEnded, h2.events.StreamReset)):
                    active.discard(event.stream_id)
                    done += 1
                assert not isinstance(event, h2.events.ConnectionTerminated), event
    finally:
        client.close()
    assert statuses == {200: total}


def test_http11_pipelining_still_works(hardened: ServerProcess) -> None:
    """Bytes sent ahead while a response is in progress are kept and answered in order,
    past the read-ahead bound (16 KiB) too."""
    parts = urlsplit(hardened.base_url)
    count = 400  # ~26 KB of requests in one write
    request = f"GET /v1/models HTTP/1.1\r\nHost: {parts.netloc}\r\n\r\n".encode()
    with socket.create_connection(address(hardened.base_url), timeout=SETTLE_S) as sock:
        sock.sendall(request * count)
        received = b""
        while received.count(b"HTTP/1.1 200") < count:
            chunk = sock.recv(65536)
            assert chunk, f"closed after {received.count(b'HTTP/1.1 200')} responses"
            received += chunk
    assert received.count(b"HTTP/1.1 ") == count


def test_oversized_headers_are_refused_and_the_server_goes_on(hardened: ServerProcess) -> None:
    big = "x" * (MAX_HEADER_BYTES + 1024)
    host, port = address(hardened.base_url)
    with socket.create_connection((host, port), timeout=SETTLE_S) as sock:
        sock.sendall(f"GET /v1/models HTTP/1.1\r\nHost: {host}\r\nX-Big: {big}\r\n\r\n".encode())
        assert sock.recv(65536).startswith(b"HTTP/1.1 431 ")
    client = RawH2(hardened.base_url)
    try:
        assert client.round_trip()  # our SETTINGS (the header-list limit) are acknowledged
        stream_id = client.conn.get_next_available_stream_id()
        client.conn.send_headers(stream_id, [(":method", "GET"), (":path", "/v1/models"),
                                             (":scheme", "http"), (":authority", client.authority),
                                             ("x-big", big)], end_stream=True)
        client.flush()
        while not client.closed and client.terminated is None:
            client.receive()
        assert client.terminated is not None
        assert client.terminated.error_code != h2.errors.ErrorCodes.NO_ERROR
    finally:
        client.close()
    assert httpx.get(f"{hardened.base_url}/v1/models").status_code == 200


# -- item 6: JSON bodies, origins, hosts ------------------------------------------------------
@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x", "application/jsonx"])
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions", "/engines"])
def test_post_requires_json(hardened: ServerProcess, path: str, content_type: str | None) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    response = httpx.post(hardened.base_url + path, content=b'{"model": "gemma"}', headers=headers,
                          timeout=SETTLE_S)
    if content_type is None:  # httpx would send none; make sure
        assert "content-type" not in response.request.headers
    assert response.status_code == 415, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == "unsupported_media_type"


def test_json_with_charset_is_accepted(hardened: ServerProcess) -> None:
    response = httpx.post(f"{hardened.base_url}/v1/completions", timeout=SETTLE_S,
                          content=json.dumps({"model": ENGINE, "prompt": "Hi", "max_tokens": 1}),
                          headers={"Content-Type": "application/json; charset=utf-8"})
    assert response.status_code == 200, response.text


def test_foreign_origin_and_rebound_host_are_refused_without_keys(hardened: ServerProcess) -> None:
    url = hardened.base_url
    own = urlsplit(url).netloc
    engine = {"engine_id": "x", "model_path": "/nonexistent.gguf"}
    for method, path, kwargs in (("POST", "/engines", {"json": engine}),
                                 ("DELETE", "/engines/no-such-engine", {}),
                                 ("POST", "/v1/completions", {"json": {"model": ENGINE, "prompt": "x"}})):
        foreign = httpx.request(method, url + path, headers={"Origin": "http://evil.example"},
                                timeout=SETTLE_S, **kwargs)  # type: ignore[arg-type]
        assert foreign.status_code == 403 and foreign.json()["error"]["code"] == "origin_forbidden"
        null = httpx.request(method, url + path, headers={"Origin": "null"}, timeout=SETTLE_S,
                             **kwargs)  # type: ignore[arg-type]
        assert null.status_code == 403
        rebound = httpx.request(method, url + path, headers={"Host": "evil.example:8080"},
                                timeout=SETTLE_S, **kwargs)  # type: ignore[arg-type]
        assert rebound.status_code == 403 and rebound.json()["error"]["code"] == "host_forbidden"
    # the server's own page, and clients that are not browsers, go through
    same = httpx.delete(url + "/engines/no-such-engine", headers={"Origin": f"http://{own}"})
    assert same.status_code == 404
    assert httpx.delete(url + "/engines/no-such-engine").status_code == 404
    assert httpx.delete(url + "/engines/no-such-engine", headers={"Host": "localhost"}).status_code == 404
    # reading stays open to any origin (CORS decides what the page may see)
    assert httpx.get(url + "/v1/models", headers={"Origin": "http://evil.example"}).status_code == 200


def test_origin_check_is_off_with_api_keys(keyed_server: ServerProcess) -> None:
    headers = {"Origin": "http://evil.example", "Host": "evil.example",
               "Authorization": "Bearer sk-test-1"}
    response = httpx.delete(keyed_server.base_url + "/engines/no-such-engine", headers=headers)
    assert response.status_code == 404


def test_cors_origins_are_allowed(model_path: Path, tmp_path: Path) -> None:
    server = start_server(model_path, tmp_path / "server.log", "--cors-origins", "http://ui.example")
    try:
        allowed = httpx.delete(server.base_url + "/engines/none", headers={"Origin": "http://ui.example"})
        assert allowed.status_code == 404
        assert allowed.headers["Access-Control-Allow-Origin"] == "http://ui.example"
        other = httpx.delete(server.base_url + "/engines/none", headers={"Origin": "http://other.example"})
        assert other.status_code == 403
    finally:
        stop_server(server)


# -- item 7: integers that reach C --------------------------------------------------------------
@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(("field", "value"), [("top_k", 2**31), ("top_k", 2**40), ("seed", 2**64),
                                              ("max_tokens", 2**31), ("top_k", -1)])
def test_out_of_range_integers_are_400_naming_the_field(hardened: ServerProcess, field: str,
                                                        value: int, stream: bool) -> None:
    body = {"model": ENGINE, "prompt": "Hi", "max_tokens": 2, "stream": stream, field: value}
    response = httpx.post(f"{hardened.base_url}/v1/completions", json=body, timeout=SETTLE_S)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == field


@pytest.mark.parametrize("prompt", [[-1], [5, 262144], [2**31 - 1], [[7], [-2233877, 8189905]],
                                    [-1, "a"], [2**31, "a"], ["a", [3, 2**40]]])
@pytest.mark.parametrize("echo", [False, True])
def test_token_ids_outside_the_vocabulary_are_400(hardened: ServerProcess, prompt: list,
                                                  echo: bool) -> None:
    """An id libllama does not know aborted the whole process (std::out_of_range in
    token_to_piece, found by the fuzz run): now a 400 naming prompt, in llama-server's mixed
    prompts (ids and texts) too."""
    body = {"model": ENGINE, "prompt": prompt, "max_tokens": 1, "echo": echo}
    response = httpx.post(f"{hardened.base_url}/v1/completions", json=body, timeout=SETTLE_S)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "prompt"
    assert httpx.get(f"{hardened.base_url}/v1/models").status_code == 200


def test_largest_valid_top_k_works(hardened: ServerProcess) -> None:
    response = httpx.post(f"{hardened.base_url}/v1/completions", timeout=SETTLE_S, json={
        "model": ENGINE, "prompt": "Hi", "max_tokens": 2, "top_k": 2**31 - 1, "seed": 2**64 - 1})
    assert response.status_code == 200, response.text


# -- item 7: /openapi.json is what the server answers -------------------------------------------
def test_every_route_is_documented() -> None:
    app = create_app(EngineRegistry(), ServerSettings())
    routes = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", r"{\1}", rule.rule)
        routes |= {(method.lower(), path) for method in rule.methods or ()
                   if method not in ("HEAD", "OPTIONS")}
    documented = {(method, path) for path, operations in openapi_document()["paths"].items()
                  for method in operations}
    assert routes == documented


def test_openapi_documents_the_real_answers(hardened: ServerProcess) -> None:
    document = httpx.get(f"{hardened.base_url}/openapi.json").json()
    paths = document["paths"]
    metrics = httpx.get(f"{hardened.base_url}/metrics")
    documented_types = paths["/metrics"]["get"]["responses"]["200"]["content"]
    assert metrics.headers["content-type"].split(";")[0] in documented_types
    expired = httpx.post(f"{hardened.base_url}/v1/completions", timeout=SETTLE_S, json={
        "model": ENGINE, "prompt": "Hi", "max_tokens": 2, "timeout": 1e-9})
    assert expired.status_code == 504 and expired.json()["error"]["code"] == "deadline_exceeded"
    for path in ("/v1/completions", "/v1/chat/completions"):
        responses = paths[path]["post"]["responses"]
        assert {"200", "400", "401", "403", "404", "413", "415", "500", "503", "504"} <= set(responses)
        assert set(responses["200"]["content"]) == {"application/json", "text/event-stream"}
    unsupported = httpx.post(f"{hardened.base_url}/engines", content=b"x",
                             headers={"Content-Type": "text/plain"})
    assert unsupported.status_code == 415 and "415" in paths["/engines"]["post"]["responses"]

