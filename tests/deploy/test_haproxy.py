"""deploy/haproxy/haproxy.cfg with Debian's haproxy in front of two real replicas on loopback.

Load runs through HAProxy while one replica is sent SIGTERM: its in-flight streams finish,
new requests go to the other replica, nothing hangs, and every request either completes or
ends with a clean error. The replica comes back and gets traffic again. The turns of one
session (X-Session-Id) stay on one replica, whose prefix cache serves each next turn.

Failures (issue 27): a flood of requests whose own `timeout` ends them with 504 leaves both
replicas up, and a replica killed with SIGKILL has its non-streamed requests in flight
retried on the other replica, every one answered 200."""
from __future__ import annotations

import csv
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from ..server_process import ENGINE, ServerProcess, free_port

pytestmark = [pytest.mark.haproxy, pytest.mark.model]

CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "haproxy" / "haproxy.cfg"
REPLICA_FLAGS = ("--engine-id", ENGINE, "--n-ctx", "1024", "--parallel", "4", "--threads", "1",
                 "--drain-timeout", "120")
REQUEST_TIMEOUT_S = 180.0  # a request that takes longer counts as hung
REQUEST_TIMEOUT = httpx.Timeout(REQUEST_TIMEOUT_S, connect=30.0)


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def spawn_replica(model_path: Path, port: int, log_path: Path) -> ServerProcess:
    log = log_path.open("ab")
    process = subprocess.Popen([sys.executable, "-m", "kolosal", "--port", str(port), "--model",
                                str(model_path), *REPLICA_FLAGS], stdout=log,
                               stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    return ServerProcess(f"http://127.0.0.1:{port}", process, log_path)


def wait_ready(replica: ServerProcess) -> ServerProcess:
    def ready() -> bool:
        assert replica.process.poll() is None, f"replica exited: {replica.log()[-3000:]}"
        try:
            return httpx.get(f"{replica.base_url}/health/ready", timeout=2).status_code == 200
        except httpx.TransportError:
            return False
    wait_for(ready, 180, f"replica {replica.base_url}")
    return replica


@dataclass
class Balancer:
    url: str
    stats_url: str
    process: subprocess.Popen[bytes]
    log_path: Path
    tls_url: str | None = None

    def server_row(self, name: str) -> dict[str, str]:
        """The replica's line of HAProxy's stats CSV (status, chkdown, wretr, wredis...)."""
        text = httpx.get(f"{self.stats_url}/stats;csv", timeout=5).text
        for row in csv.DictReader(io.StringIO(text.lstrip("# "))):
            if row["pxname"] == "kolosal_replicas" and row["svname"] == name:
                return row
        raise AssertionError(f"{name} not in HAProxy stats")

    def frontend_row(self) -> dict[str, str]:
        text = httpx.get(f"{self.stats_url}/stats;csv", timeout=5).text
        rows = csv.DictReader(io.StringIO(text.lstrip("# ")))
        return next(row for row in rows if row["pxname"] == "kolosal" and row["svname"] == "FRONTEND")

    def server_status(self, name: str) -> str:
        return self.server_row(name)["status"]


@pytest.fixture
def balancer(haproxy_binary: str, tmp_path: Path) -> Iterator[Callable[[int, int], Balancer]]:
    started: list[subprocess.Popen[bytes]] = []

    def start(port1: int, port2: int) -> Balancer:
        listen, stats = free_port(), free_port()
        env = {**os.environ, "KOLOSAL_LISTEN": f"127.0.0.1:{listen}",
               "KOLOSAL_STATS_LISTEN": f"127.0.0.1:{stats}",
               "KOLOSAL_REPLICA_1": f"127.0.0.1:{port1}", "KOLOSAL_REPLICA_2": f"127.0.0.1:{port2}"}
        if shutil.which("openssl"):
            pem = tmp_path / "haproxy.pem"
            subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                            "-subj", "/CN=localhost", "-keyout", str(pem), "-out", str(pem)],
                           check=True, capture_output=True)
            env |= {"KOLOSAL_TLS_PEM": str(pem), "KOLOSAL_TLS_LISTEN": f"127.0.0.1:{free_port()}"}
        log_path = tmp_path / "haproxy.log"
        process = subprocess.Popen([haproxy_binary, "-db", "-f", str(CONFIG)], env=env,
                                   stdout=log_path.open("wb"), stderr=subprocess.STDOUT)
        started.append(process)
        proxy = Balancer(f"http://127.0.0.1:{listen}", f"http://127.0.0.1:{stats}", process, log_path,
                         f"https://{env['KOLOSAL_TLS_LISTEN']}" if "KOLOSAL_TLS_PEM" in env else None)

        def up() -> bool:
            assert process.poll() is None, f"haproxy exited: {log_path.read_text()}"
            try:
                return all(proxy.server_status(n) == "UP" for n in ("replica1", "replica2"))
            except httpx.TransportError:
                return False
        wait_for(up, 60, "HAProxy to see both replicas up")
        return proxy

    yield start
    for process in started:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


@dataclass
class Outcome:
    started: float
    ended: float
    served_by: str | None
    kind: str            # ok | error_event | http_error | broken
    detail: str = ""


def chat_stream(client: httpx.Client, url: str, body: dict,
                headers: dict[str, str] | None = None) -> tuple[Outcome, dict | None]:
    """One streaming chat through the balancer, classified; returns its usage when sent."""
    started = time.monotonic()
    served_by, usage, finish, error, done = None, None, None, None, False
    try:
        with client.stream("POST", f"{url}/v1/chat/completions", json={**body, "stream": True},
                           headers=headers) as response:
            served_by = response.headers.get("X-Served-By")
            if response.status_code != 200:
                payload = json.loads(response.read())  # a clean error is an OpenAI error object
                assert "error" in payload
                return Outcome(started, time.monotonic(), served_by, "http_error",
                               f"{response.status_code} {payload['error'].get('code')}"), None
            for line in response.iter_lines():
                if not line.startswith("data: "):
                    continue
                if line == "data: [DONE]":
                    done = True
                    break
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    error = chunk["error"]
                elif chunk.get("usage"):
                    usage = chunk["usage"]
                elif chunk["choices"] and chunk["choices"][0]["finish_reason"]:
                    finish = chunk["choices"][0]["finish_reason"]
    except Exception as exc:  # noqa: BLE001 - a transport failure or a malformed stream
        return Outcome(started, time.monotonic(), served_by, "broken", repr(exc)), None
    kind = ("ok" if done and finish and not error else
            "error_event" if done and error else "broken")
    return Outcome(started, time.monotonic(), served_by, kind, json.dumps(error or {})), usage


class Load:
    """Clients sending streaming chats through the balancer until stopped."""

    def __init__(self, url: str, clients: int) -> None:
        self.url = url
        self.outcomes: list[Outcome] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True)
                         for i in range(clients)]
        for thread in self._threads:
            thread.start()

    def _run(self, index: int) -> None:
        body = {"model": ENGINE, "max_tokens": 24, "ignore_eos": True,
                "messages": [{"role": "user", "content": f"Client {index}: tell me about the sea."}]}
        with httpx.Client(timeout=REQUEST_TIMEOUT) as client:
            while not self._stop.is_set():
                outcome, _ = chat_stream(client, self.url, body)
                with self._lock:
                    self.outcomes.append(outcome)

    def served(self, name: str, since: float = 0.0) -> int:
        with self._lock:
            return sum(1 for o in self.outcomes if o.served_by == name and o.started >= since
                       and o.kind == "ok")

    def stop(self) -> list[Outcome]:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=REQUEST_TIMEOUT_S + 30)
            assert not thread.is_alive(), "a client hung"
        return list(self.outcomes)


def busy_slots(replica: ServerProcess) -> int:
    try:
        status = httpx.get(f"{replica.base_url}/engines/{ENGINE}/status", timeout=5).json()
    except httpx.TransportError:
        return 0
    return int(status["stats"]["slots_busy"])


def test_haproxy_drain_failover_return_and_session_affinity(
        model_path: Path, tmp_path: Path, balancer: Callable[[int, int], Balancer]) -> None:
    port1, port2 = free_port(), free_port()
    replicas: dict[str, ServerProcess] = {}
    try:
        replicas["replica1"] = spawn_replica(model_path, port1, tmp_path / "replica1.log")
        replicas["replica2"] = spawn_replica(model_path, port2, tmp_path / "replica2.log")
        for replica in replicas.values():  # both load their model at once
            wait_ready(replica)
        proxy = balancer(port1, port2)
        check_http2_to_clients(proxy)

        load = Load(proxy.url, clients=4)
        try:
            wait_for(lambda: load.served("replica1") >= 2 and load.served("replica2") >= 2, 240,
                     "traffic on both replicas")
            # SIGTERM replica1 while it is generating.
            replica1 = replicas["replica1"]
            wait_for(lambda: busy_slots(replica1) > 0, 60, "work in flight on replica1")
            sigterm_at = time.monotonic()
            replica1.process.send_signal(signal.SIGTERM)
            wait_for(lambda: not_ready(replica1), 30, "replica1 to report draining")
            draining_at = time.monotonic()
            assert replica1.process.wait(timeout=150) == 0
            wait_for(lambda: proxy.server_status("replica1").startswith("DOWN"), 30,
                     "HAProxy to mark replica1 down")
            down_at = time.monotonic()
            wait_for(lambda: load.served("replica2", since=down_at) >= 8, 240,
                     "requests served while replica1 is away")
            # Restart it on the same port: traffic returns.
            restart_at = time.monotonic()
            replicas["replica1"] = wait_ready(spawn_replica(model_path, port1, tmp_path / "replica1.log"))
            wait_for(lambda: proxy.server_status("replica1") == "UP", 30, "replica1 back up")
            back_at = time.monotonic()
            wait_for(lambda: load.served("replica1", since=back_at) >= 3, 240,
                     "traffic on the restarted replica1")
        finally:
            outcomes = load.stop()

        broken = [o for o in outcomes if o.kind == "broken"]
        assert not broken, broken  # nothing hung, nothing cut without an error
        assert all(o.kind in ("ok", "error_event", "http_error") for o in outcomes)
        # Streams in flight on replica1 at SIGTERM ran to their end.
        drained = [o for o in outcomes if o.served_by == "replica1" and o.started < sigterm_at
                   and o.ended > sigterm_at]
        assert drained and all(o.kind == "ok" for o in drained), drained
        # From the moment it said "draining", replica1 got nothing new: HAProxy retried
        # its 503s and refused connections on replica2.
        after = [o for o in outcomes if draining_at < o.started < restart_at]
        assert after and all(o.served_by == "replica2" for o in after if o.kind == "ok"), [
            o for o in after if o.served_by != "replica2"]
        assert sum(o.kind == "ok" for o in after) >= 8
        errors = [o for o in outcomes if o.kind != "ok"]
        assert len(errors) <= len(outcomes) // 10, errors  # clean errors stay the exception

        check_session_affinity(proxy)
    finally:
        for replica in replicas.values():
            if replica.process.poll() is None:
                replica.process.terminate()
                try:
                    replica.process.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    replica.process.kill()


def not_ready(replica: ServerProcess) -> bool:
    try:
        return httpx.get(f"{replica.base_url}/health/ready", timeout=30).status_code == 503
    except httpx.ConnectError:
        return True  # already gone


def check_http2_to_clients(proxy: Balancer) -> None:
    body = {"model": ENGINE, "max_tokens": 4, "messages": [{"role": "user", "content": "Hi"}]}
    # h2c (prior knowledge) on the cleartext port; h2 by ALPN on the TLS port when openssl
    # could make a certificate
    for url in filter(None, (proxy.url, proxy.tls_url)):
        with httpx.Client(http1=False, http2=True, verify=False, timeout=REQUEST_TIMEOUT) as client:
            ready = client.get(f"{url}/health/ready")
            assert ready.http_version == "HTTP/2" and ready.status_code == 200, url
            outcome, _ = chat_stream(client, url, body)
            assert outcome.kind == "ok", (url, outcome)


def check_session_affinity(proxy: Balancer) -> None:
    """Two conversations, turns interleaved: each stays on one replica, and each turn
    reuses at least the previous turn's whole prompt from that replica's prefix cache."""
    sessions = {name: [{"role": "user", "content": f"Session {name}: name three {topic}."}]
                for name, topic in (("a", "rivers"), ("b", "mountains"))}
    served: dict[str, set[str]] = {name: set() for name in sessions}
    previous_prompt: dict[str, int] = {}
    with httpx.Client(timeout=REQUEST_TIMEOUT) as client:
        for turn in range(4):
            for name, messages in sessions.items():
                body = {"model": ENGINE, "max_tokens": 12, "temperature": 0, "messages": messages,
                        "stream_options": {"include_usage": True}}
                outcome, usage = chat_stream(client, proxy.url, body,
                                             headers={"X-Session-Id": f"session-{name}"})
                assert outcome.kind == "ok" and usage is not None, outcome
                served[name].add(str(outcome.served_by))
                cached = usage["prompt_tokens_details"]["cached_tokens"]
                if turn:
                    assert cached >= previous_prompt[name] - 1, (name, turn, cached, previous_prompt)
                previous_prompt[name] = usage["prompt_tokens"]
                messages += [{"role": "assistant", "content": f"Turn {turn} answer."},
                             {"role": "user", "content": f"And {turn + 1} more, please."}]
    assert all(len(replicas) == 1 for replicas in served.values()), served


DEADLINE_FLOOD = 40  # requests whose `timeout` passes at once: a 504 each, by design
IN_FLIGHT = 6        # non-streamed requests in flight when a replica is killed


def test_haproxy_deadline_504s_keep_replicas_up_and_sigkill_is_retried(
        model_path: Path, tmp_path: Path, balancer: Callable[[int, int], Balancer]) -> None:
    port1, port2 = free_port(), free_port()
    replicas = {"replica1": spawn_replica(model_path, port1, tmp_path / "replica1.log"),
                "replica2": spawn_replica(model_path, port2, tmp_path / "replica2.log")}
    try:
        for replica in replicas.values():
            wait_ready(replica)
        proxy = balancer(port1, port2)
        check_deadline_flood_keeps_replicas_up(proxy)
        check_sigkill_in_flight_is_retried(proxy, replicas)
    finally:
        for replica in replicas.values():
            if replica.process.poll() is None:
                replica.process.kill()
                replica.process.wait(timeout=60)


def check_deadline_flood_keeps_replicas_up(proxy: Balancer) -> None:
    """A 504 the client asked for (its `timeout` passed) says nothing about the replica's
    health: both stay UP at every sample, and neither ever went down."""
    body = {"model": ENGINE, "max_tokens": 64, "timeout": 0.001,
            "messages": [{"role": "user", "content": "Tell me about the sea."}]}
    served: set[str] = set()
    with httpx.Client(timeout=REQUEST_TIMEOUT) as client:
        for _ in range(DEADLINE_FLOOD):
            response = client.post(f"{proxy.url}/v1/chat/completions", json=body)
            assert response.status_code == 504, response.text
            served.add(response.headers["X-Served-By"])
            statuses = {name: proxy.server_status(name) for name in ("replica1", "replica2")}
            assert set(statuses.values()) == {"UP"}, statuses
    assert served == {"replica1", "replica2"}, served  # both answered 504s
    for name in ("replica1", "replica2"):
        assert proxy.server_row(name)["chkdown"] == "0", proxy.server_row(name)


def check_sigkill_in_flight_is_retried(proxy: Balancer, replicas: dict[str, ServerProcess]) -> None:
    """Non-streamed requests in flight on a replica killed with SIGKILL (no answer, its
    connections closed by the kernel) are retried on the other replica: every request is
    answered 200, all by replica2, and HAProxy counts the redispatches."""
    body = json.dumps({"model": ENGINE, "max_tokens": 200, "ignore_eos": True,
                       "messages": [{"role": "user", "content": "Tell me about the sea."}]}).encode()
    heads = int(proxy.frontend_row()["req_tot"])
    responses: list[httpx.Response | Exception] = []
    lock = threading.Lock()

    def in_two_writes() -> Iterator[bytes]:
        # As SDKs may: the head and the body's start first, the rest once HAProxy has read
        # every request's head (it could connect to a replica then, before the body ended,
        # and a request not whole when sent was never retried).
        yield body[:len(body) // 2]
        wait_for(lambda: int(proxy.frontend_row()["req_tot"]) >= heads + IN_FLIGHT, 60,
                 "HAProxy to read every request's head")
        yield body[len(body) // 2:]

    def send() -> None:
        try:
            with httpx.Client(timeout=REQUEST_TIMEOUT) as client:
                response = client.post(f"{proxy.url}/v1/chat/completions", content=in_two_writes(),
                                       headers={"Content-Type": "application/json",
                                                "Content-Length": str(len(body))})
        except httpx.HTTPError as error:
            response = error  # type: ignore[assignment]
        with lock:
            responses.append(response)

    threads = [threading.Thread(target=send, daemon=True) for _ in range(IN_FLIGHT)]
    for thread in threads:
        thread.start()
    replica1 = replicas["replica1"]
    wait_for(lambda: busy_slots(replica1) >= IN_FLIGHT // 2, 120, "requests in flight on replica1")
    replica1.process.kill()
    replica1.process.wait(timeout=30)
    for thread in threads:
        thread.join(timeout=REQUEST_TIMEOUT_S + 30)
        assert not thread.is_alive(), "a client hung"
    answers = [(r.status_code, r.headers.get("X-Served-By")) if isinstance(r, httpx.Response)
               else (0, repr(r)) for r in responses]
    assert answers == [(200, "replica2")] * IN_FLIGHT, answers
    for response in responses:
        assert isinstance(response, httpx.Response)
        choice = response.json()["choices"][0]
        assert choice["finish_reason"] == "length" and choice["message"]["content"], choice
    row = proxy.server_row("replica1")
    assert int(row["wredis"] or 0) >= IN_FLIGHT // 2, row  # retried elsewhere, not failed
    wait_for(lambda: proxy.server_status("replica1").startswith("DOWN"), 30,
             "HAProxy to mark the killed replica down")
