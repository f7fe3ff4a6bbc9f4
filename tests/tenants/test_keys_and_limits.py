"""Keys with identities and their limits, with no server: the keys file's validation, the
constant-time lookup, and the sliding windows with a fake clock."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from kolosal.tenants.keys import KeyRing, KeysFileError, KeySpec, flag_keys, load_keys_file
from kolosal.tenants.limits import WINDOW_S, Limiter, RateLimitedError, duration

KEYS_YAML = """
keys:
  - name: team-a
    key: sk-team-a-secret
    models: [gemma]
    rpm: 2
  - name: team-b
    key_sha256: {digest}
    admin: true
    tpm: 100
    max_concurrent: 1
    weight: 2
    priority: -1
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "keys.yaml"
    path.write_text(text)
    return path


def test_the_keys_file_declares_identities_and_never_keeps_a_key(tmp_path: Path) -> None:
    digest = hashlib.sha256(b"sk-team-b-secret").hexdigest()
    specs = load_keys_file(write(tmp_path, KEYS_YAML.format(digest=digest)))
    ring = KeyRing(specs)
    a = ring.identify(b"sk-team-a-secret")
    b = ring.identify(b"sk-team-b-secret")
    assert a is not None and a.name == "team-a" and a.may_use("gemma") and not a.may_use("other")
    assert b is not None and b.admin and b.tenancy.weight == 2 and b.tenancy.priority == -1
    assert ring.identify(b"sk-team-a-secre") is None and ring.identify(b"") is None
    assert b"sk-team-a-secret" not in repr(specs).encode()  # only digests are kept


def test_json_is_a_keys_file_too(tmp_path: Path) -> None:
    specs = load_keys_file(write(tmp_path, '{"keys": [{"name": "j", "key": "sk-json-key-1"}]}'))
    assert [spec.name for spec in specs] == ["j"]


@pytest.mark.parametrize(("text", "problem"), [
    ("keys: [{name: a}]", "exactly one of key and key_sha256"),
    ("keys: [{name: a, key: sk-aaaaaaaa, key_sha256: '" + "0" * 64 + "'}]", "exactly one"),
    ("keys: [{name: a, key: short}]", "at least 8"),
    ("keys: [{name: 'a b', key: sk-aaaaaaaa}]", "pattern"),
    ("keys: [{name: a, key: sk-aaaaaaaa, rpm: 0}]", "greater than or equal to 1"),
    ("keys: [{name: a, key: sk-aaaaaaaa, weight: .nan}]", "finite"),
    ("keys: [{name: a, key: sk-aaaaaaaa, colour: red}]", "Extra inputs"),
    ("keys: [{name: a, key: sk-aaaaaaaa, lora: [{id: 0, scale: -1}]}]", "greater than or equal to 0"),
    ("keys: [{name: a, key: sk-aaaaaaaa, lora: [{id: -1, scale: 1}]}]", "greater than or equal to 0"),
    ("keys: [{name: a, key: sk-aaaaaaaa}, {name: a, key: sk-bbbbbbbb}]", "same name"),
    ("keys: [{name: a, key: sk-aaaaaaaa}, {name: b, key: sk-aaaaaaaa}]", "same key"),
    ("keys: {name: a}", "valid list"),
    ("- [unbalanced", "keys file"),
    ("", "valid dictionary"),
])
def test_a_bad_keys_file_is_refused_with_its_problem_named(tmp_path: Path, text: str, problem: str) -> None:
    with pytest.raises(KeysFileError, match=problem):
        load_keys_file(write(tmp_path, text))


def test_a_missing_or_binary_keys_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(KeysFileError):
        load_keys_file(tmp_path / "absent.yaml")
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00keys")
    with pytest.raises(KeysFileError):
        load_keys_file(binary)


def test_plain_flags_are_keys_without_limits() -> None:
    ring = KeyRing(flag_keys(["sk-1"], ["sk-admin"]))
    user, admin = ring.identify(b"sk-1"), ring.identify(b"sk-admin")
    assert user is not None and not user.admin and not user.limited and user.name == "api-key-1"
    assert admin is not None and admin.admin and ring.has_admin_keys


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_requests_per_minute_slide_and_say_when_to_retry() -> None:
    clock = Clock()
    limiter = Limiter(clock)
    spec = KeySpec("a", rpm=2)
    limiter.admit(spec, 10).settle(10)
    clock.now += 10
    limiter.admit(spec, 10).settle(10)
    assert limiter.headers(spec)["x-ratelimit-remaining-requests"] == "0"
    with pytest.raises(RateLimitedError) as refused:
        limiter.admit(spec, 10)
    assert refused.value.limit == "requests" and refused.value.retry_after_s == pytest.approx(WINDOW_S - 10)
    assert refused.value.headers["x-ratelimit-limit-requests"] == "2"
    clock.now += WINDOW_S - 10
    limiter.admit(spec, 10)  # the first admission left the window


def test_tokens_are_reserved_then_settled_to_what_was_used() -> None:
    clock = Clock()
    limiter = Limiter(clock)
    spec = KeySpec("t", tpm=100)
    ticket = limiter.admit(spec, 80)  # prompt + max_tokens reserved
    with pytest.raises(RateLimitedError) as refused:
        limiter.admit(spec, 30)
    assert refused.value.limit == "tokens"
    ticket.settle(20)  # it stopped early
    ticket.settle(20)  # settling twice changes nothing
    limiter.admit(spec, 30).settle(30)
    assert limiter.headers(spec)["x-ratelimit-remaining-tokens"] == "50"
    with pytest.raises(RateLimitedError) as too_big:
        limiter.admit(spec, 101)  # more than the whole budget: a full window
    assert too_big.value.retry_after_s == WINDOW_S


def test_a_ticket_settled_after_its_window_passed_does_not_count_twice() -> None:
    clock = Clock()
    limiter = Limiter(clock)
    spec = KeySpec("t", tpm=100)
    ticket = limiter.admit(spec, 90)
    clock.now += WINDOW_S + 1  # a long stream outlives the window
    limiter.admit(spec, 10).settle(10)
    ticket.settle(50)
    assert limiter.headers(spec)["x-ratelimit-remaining-tokens"] == "90"


def test_requests_in_flight_are_bounded() -> None:
    limiter = Limiter(Clock())
    spec = KeySpec("c", max_concurrent=1)
    ticket = limiter.admit(spec, 1)
    with pytest.raises(RateLimitedError) as refused:
        limiter.admit(spec, 1)
    assert refused.value.limit == "concurrency"
    ticket.settle(1)
    limiter.admit(spec, 1)
    admitted, limited, _ = limiter.counters()["c"]
    assert admitted == 2 and limited["concurrency"] == 1


def test_reset_durations_read_like_openais() -> None:
    assert duration(0.02) == "20ms" and duration(1.5) == "1.5s" and duration(360) == "6m0s"
