"""API keys with identities, from ``--keys-file`` (YAML; JSON is valid YAML) and the plain
``--api-key`` / ``--admin-key`` flags.

Policy:
- A key is known by its SHA-256 digest only: the file may hold ``key`` (hashed on load and
  dropped) or ``key_sha256``. A presented key is hashed once and compared with every digest
  in constant time (``hmac.compare_digest``, no early exit), so neither timing nor a log
  line gives a key away; logs and metrics name the key's ``name``.
- ``models`` lists the engines a key may use (absent: all); an engine outside it does not
  exist for that key (404, left out of its model list).
- ``admin`` keys may manage engines; ``rpm`` / ``tpm`` / ``max_concurrent`` bound the key's
  requests per minute, tokens per minute and requests in flight (absent: unbounded);
  ``weight`` and ``priority`` are its share and class in the engines' fair admission;
  ``lora`` its default LoRA adapter set (``[{id, scale}]``) for requests that name none.
- A file that does not parse or validate is refused whole with every problem named
  (``KeysFileError``): at start the server does not start, on SIGHUP the old keys stay.
"""
from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..engine import Tenancy

MAX_KEYS = 10_000


class KeysFileError(ValueError):
    """The keys file cannot be used; the message names the file and each problem."""


@dataclass(frozen=True, slots=True)
class KeySpec:
    name: str
    digest: bytes = b""                 # SHA-256 of the key
    models: frozenset[str] | None = None
    admin: bool = False
    rpm: int | None = None
    tpm: int | None = None
    max_concurrent: int | None = None
    weight: float = 1.0
    priority: int = 0
    lora: tuple[tuple[int, float], ...] | None = None  # default adapter set: (id, scale)

    @property
    def tenancy(self) -> Tenancy:
        return Tenancy(self.name, self.weight, self.priority)

    def may_use(self, engine_id: str) -> bool:
        return self.models is None or engine_id in self.models

    @property
    def limited(self) -> bool:
        return self.rpm is not None or self.tpm is not None or self.max_concurrent is not None


def digest_of(key: bytes) -> bytes:
    return hashlib.sha256(key).digest()


class _LoraScale(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: int = Field(ge=0, le=1000)
    scale: float = Field(ge=0.0, le=10.0, allow_inf_nan=False)


class _KeyEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:@-]+$")
    key: str | None = Field(default=None, min_length=8, max_length=512)
    key_sha256: str | None = Field(default=None, pattern=r"^[0-9a-fA-F]{64}$")
    models: list[str] | None = Field(default=None, max_length=1000)
    admin: bool = False
    rpm: int | None = Field(default=None, ge=1, le=10**9)
    tpm: int | None = Field(default=None, ge=1, le=10**12)
    max_concurrent: int | None = Field(default=None, ge=1, le=10**6)
    weight: float = Field(default=1.0, gt=0, le=10**6, allow_inf_nan=False)
    priority: int = Field(default=0, ge=-1000, le=1000)
    lora: list[_LoraScale] | None = Field(default=None, max_length=32)

    @model_validator(mode="after")
    def _one_key(self) -> _KeyEntry:
        if (self.key is None) == (self.key_sha256 is None):
            raise ValueError("give exactly one of key and key_sha256")
        return self

    def spec(self) -> KeySpec:
        digest = bytes.fromhex(self.key_sha256) if self.key_sha256 else digest_of((self.key or "").encode())
        lora = None if self.lora is None else tuple((entry.id, entry.scale) for entry in self.lora)
        return KeySpec(self.name, digest, None if self.models is None else frozenset(self.models),
                       self.admin, self.rpm, self.tpm, self.max_concurrent, self.weight, self.priority,
                       lora)


class _KeysFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    keys: list[_KeyEntry] = Field(max_length=MAX_KEYS)


def load_keys_file(path: str | Path) -> list[KeySpec]:
    """The keys the file declares; KeysFileError naming every problem."""
    try:
        data: Any = yaml.safe_load(Path(path).read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise KeysFileError(f"keys file {path}: {error}") from error
    try:
        parsed = _KeysFile.model_validate(data)
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in error.errors())
        raise KeysFileError(f"keys file {path}: {problems}") from error
    specs = [entry.spec() for entry in parsed.keys]
    for kind, values in (("name", [s.name for s in specs]), ("key", [s.digest for s in specs])):
        if len(set(values)) != len(values):
            raise KeysFileError(f"keys file {path}: the same {kind} is declared twice")
    return specs


def flag_keys(api_keys: Iterable[str], admin_keys: Iterable[str]) -> list[KeySpec]:
    """The plain --api-key / --admin-key keys, named by their kind and position."""
    specs = [KeySpec(f"api-key-{index}", digest_of(key.encode()))
             for index, key in enumerate(api_keys, 1) if key]
    specs += [KeySpec(f"admin-key-{index}", digest_of(key.encode()), admin=True)
              for index, key in enumerate(admin_keys, 1) if key]
    return specs


class KeyRing:
    """The configured keys. Empty: no key is required (every caller is anonymous)."""

    def __init__(self, specs: Iterable[KeySpec] = ()) -> None:
        self.specs = tuple(specs)
        self.has_admin_keys = any(spec.admin for spec in self.specs)
        # a key is needed once any non-admin key exists (admin keys alone guard management)
        self.requires_key = any(not spec.admin for spec in self.specs)

    def __bool__(self) -> bool:
        return bool(self.specs)

    def identify(self, supplied: bytes) -> KeySpec | None:
        """The key's spec, or None. Constant time in which key matched: every digest is
        compared."""
        presented = digest_of(supplied)
        found: KeySpec | None = None
        for spec in self.specs:
            if hmac.compare_digest(presented, spec.digest):
                found = spec
        return found

    def names(self) -> list[str]:
        return [spec.name for spec in self.specs]
