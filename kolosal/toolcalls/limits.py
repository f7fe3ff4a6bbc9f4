"""Bounds on what a request's schema or grammar may ask of the grammar engine, checked in
Python before llguidance sees it, and the deep-stack threads llguidance compiles on.

llguidance compiles a grammar recursively: a ``$ref`` chain 5,000 deep, or a GBNF of 5,000
rules each naming the next, overflowed an 8 MiB thread stack and killed the whole server
(SIGSEGV). And some limits llguidance only meets while sampling (a regex repetition of
``{1000000000}``), which failed a request with a 500 after it had started. So:

- every compile runs on a ``DEEP_STACK_BYTES`` thread (``deep_call`` / ``deep_run``), deep
  enough for anything within the bounds below (a 10,000-link chain needs ~40 MiB);
- a schema holds at most ``MAX_SCHEMA_NODES`` objects nested at most ``MAX_SCHEMA_DEPTH``
  levels; a grammar at most ``MAX_GRAMMAR_RULES`` rules; a repetition count (regex
  ``{n,m}`` in a ``pattern`` or in a grammar) at most ``MAX_REPEAT``. Each is a
  GrammarError (HTTP 400) that names the limit;
- a cycle of ``$ref`` hops (``{"$ref": "#"}``, a → b → a) describes no document: a 400
  naming the cycle (llguidance compiled it into a grammar that generates nothing).
The walks here are iterative: a hostile document cannot exhaust Python's stack either.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import queue
import re
import threading
from collections.abc import Callable, Mapping
from typing import Any, TypeVar
from urllib.parse import unquote

T = TypeVar("T")

MAX_SCHEMA_NODES = 10_000   # objects in one schema (subschemas, $defs, property maps)
MAX_SCHEMA_DEPTH = 128      # JSON nesting of a schema document
MAX_GRAMMAR_RULES = 2_000   # rules of one GBNF / Lark grammar (~0.2 s to compile at the cap)
MAX_REPEAT = 10_000         # a bounded repetition {n} / {n,m}: llguidance expands it
DEEP_STACK_BYTES = 256 << 20  # address space only: pages are touched as the stack grows
COMPILE_THREADS = 2

_REPEAT = re.compile(r"(?<!\\)\{\s*(\d+)\s*(?:,\s*(\d*)\s*)?\}")
_STRING_LITERAL = re.compile(r'"(?:\\.|[^"\\])*"' + r"|'(?:\\.|[^'\\])*'")
_RULE = re.compile(r"^\s*[@?!]?[A-Za-z_][\w.-]*(?:\[[^\]\n]*\])?\s*(?:::=|:)", re.MULTILINE)


class LimitError(ValueError):
    """A schema or grammar over one of the bounds above; the message names it."""


def check_schema(schema: Any) -> None:
    """Raise LimitError when ``schema`` is over MAX_SCHEMA_NODES objects, nested deeper than
    MAX_SCHEMA_DEPTH, or holds a ``pattern`` with a repetition over MAX_REPEAT."""
    nodes = 0
    refs: list[Mapping[str, Any]] = []
    stack: list[tuple[Any, int]] = [(schema, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_SCHEMA_DEPTH:
            raise LimitError(f"the schema is nested more than {MAX_SCHEMA_DEPTH} levels deep "
                             f"(limit {MAX_SCHEMA_DEPTH})")
        if isinstance(value, Mapping):
            nodes += 1
            if nodes > MAX_SCHEMA_NODES:
                raise LimitError(f"the schema has more than {MAX_SCHEMA_NODES} objects "
                                 f"(limit {MAX_SCHEMA_NODES})")
            pattern = value.get("pattern")
            if isinstance(pattern, str):
                check_repeats(pattern, "pattern")
            if isinstance(value.get("$ref"), str):
                refs.append(value)
            patterns = value.get("patternProperties")
            if isinstance(patterns, Mapping):
                for key in patterns:
                    check_repeats(str(key), "patternProperties")
            stack.extend((item, depth + 1) for item in value.values())
        elif isinstance(value, list):
            stack.extend((item, depth + 1) for item in value)
    _check_ref_cycles(schema, refs)


def _check_ref_cycles(root: Any, refs: list[Mapping[str, Any]]) -> None:
    """LimitError when following ``$ref`` from a schema with one comes back to it. Each
    schema is walked once (those known to end are not walked again): linear in ``refs``."""
    ends: set[int] = set()
    for start in refs:
        path: list[str] = []
        on_path: set[int] = set()
        node: Any = start
        while isinstance(node, Mapping) and isinstance(node.get("$ref"), str) and id(node) not in ends:
            if id(node) in on_path:
                raise LimitError("a $ref cycle admits no document: " + " -> ".join([*path, node["$ref"]]))
            on_path.add(id(node))
            path.append(node["$ref"])
            node = _resolve(root, node["$ref"])
        ends.update(on_path)


def _resolve(root: Any, ref: str) -> Any:
    """The schema a local ``$ref`` ("#", "#/$defs/a") points at; None for any other."""
    if not ref.startswith("#") or (len(ref) > 1 and not ref.startswith("#/")):
        return None
    node = root
    for part in ref[2:].split("/") if len(ref) > 1 else []:
        part = unquote(part).replace("~1", "/").replace("~0", "~")
        if isinstance(node, Mapping):
            node = node.get(part)
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return None
    return node


def check_grammar(text: str) -> None:
    """Raise LimitError when a GBNF / Lark grammar has over MAX_GRAMMAR_RULES rules or a
    repetition over MAX_REPEAT (string literals aside: their braces are text)."""
    rules = len(_RULE.findall(text))
    if rules > MAX_GRAMMAR_RULES:
        raise LimitError(f"the grammar has {rules} rules (limit {MAX_GRAMMAR_RULES})")
    check_repeats(_STRING_LITERAL.sub('""', text), "grammar")


def check_repeats(text: str, where: str) -> None:
    for match in _REPEAT.finditer(text):
        counts = [int(group) for group in match.groups() if group]
        if max(counts, default=0) > MAX_REPEAT:
            raise LimitError(f"{where}: the repetition {match.group(0)} is over the limit of "
                             f"{MAX_REPEAT}")


# -- deep-stack compile threads ------------------------------------------------------------
_jobs: queue.SimpleQueue[tuple[concurrent.futures.Future[Any], Callable[[], Any]]] = queue.SimpleQueue()
_started = 0
_start_lock = threading.Lock()
_THREAD_PREFIX = "grammar-compile-"


def _serve() -> None:
    while True:
        future, job = _jobs.get()
        if not future.set_running_or_notify_cancel():
            continue
        try:
            future.set_result(job())
        except BaseException as error:  # handed to the caller, as an executor does
            future.set_exception(error)


def _ensure_threads() -> None:
    global _started
    if _started >= COMPILE_THREADS:
        return
    with _start_lock:
        while _started < COMPILE_THREADS:
            previous = threading.stack_size(DEEP_STACK_BYTES)  # applies to threads made now
            try:
                threading.Thread(target=_serve, name=f"{_THREAD_PREFIX}{_started}", daemon=True).start()
            finally:
                threading.stack_size(previous)
            _started += 1


def deep_submit(function: Callable[..., T], *args: Any) -> concurrent.futures.Future[T]:
    """Run ``function(*args)`` on a deep-stack compile thread."""
    _ensure_threads()
    future: concurrent.futures.Future[T] = concurrent.futures.Future()
    _jobs.put((future, lambda: function(*args)))
    return future


def deep_call(function: Callable[..., T], *args: Any) -> T:
    """``function(*args)`` on a deep-stack thread, waited for (from a worker thread; on a
    compile thread already, it runs in place)."""
    if threading.current_thread().name.startswith(_THREAD_PREFIX):
        return function(*args)
    return deep_submit(function, *args).result()


async def deep_run(function: Callable[..., T], *args: Any) -> T:
    """``function(*args)`` on a deep-stack thread, awaited (from the event loop)."""
    return await asyncio.wrap_future(deep_submit(function, *args))
