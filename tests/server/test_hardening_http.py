"""HTTP hardening against a real server (issue 16, items 3, 6 and 7): clients that are gone
when their request arrives (HTTP/2 rapid reset, CVE-2023-44487, and HTTP/1.1 send-and-close)
cost nothing, reset floods get GOAWAY, one HTTP/2 connection carries any number of requests,
POST bodies must be JSON, a server without keys refuses foreign origins and hosts, and
integers that would reach C are refused at the edge. Raw frames come from the h2 package."""
from __future__ import annotations

import json
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

from kolosal.server.connections import RESET_BURST

from ..server_process import ENGINE, ServerProcess, start_server, stop_server, wait_idle

LONG_COMPLETION = {"model": ENGINE, "prompt": "Count to a thousand:", "max_tokens": 300,
                   "ignore_eos": True}
SETTLE_S = 120.0  # generous bound for the server to settle on a loaded machine


class RawH2:
    """One cleartext HTTP/2 connection (prior knowledge) whose frames the test controls."""

    def __init__(self, base_url: str) -> None:
        parts = urlsplit(base_url)
        self.authority = parts.netloc
        self.sock = socket.create_connection((parts.hostname, parts.port), timeout=SETTLE_S)
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
        with socket.create_connection((parts.hostname, parts.port)) as sock:
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
    sockets = [socket.create_connection((parts.hostname, parts.port)) for _ in range(12)]
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
        limit, opened, done, active = 100, 0, 0, set()
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
    with socket.create_connection((parts.hostname, parts.port), timeout=SETTLE_S) as sock:
        sock.sendall(request * count)
        received = b""
        while received.count(b"HTTP/1.1 200") < count:
            chunk = sock.recv(65536)
            assert chunk, f"closed after {received.count(b'HTTP/1.1 200')} responses"
            received += chunk
    assert received.count(b"HTTP/1.1 ") == count


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


def test_largest_valid_top_k_works(hardened: ServerProcess) -> None:
    response = httpx.post(f"{hardened.base_url}/v1/completions", timeout=SETTLE_S, json={
        "model": ENGINE, "prompt": "Hi", "max_tokens": 2, "top_k": 2**31 - 1, "seed": 2**64 - 1})
    assert response.status_code == 200, response.text
