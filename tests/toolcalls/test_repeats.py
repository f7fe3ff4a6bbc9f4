"""A call that repeats an earlier one (same name, same arguments) ends the output: it is
dropped with everything after it, streamed or whole, and the engine's watch ends the
generation there (issue 27: small models asked for calls repeat one until max_tokens)."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from kolosal.engine.plan import StepOutput
from kolosal.engine.request import (
    FinishEvent,
    FinishReason,
    Request,
    RequestStatus,
    SamplingParams,
    TokenEvent,
)
from kolosal.engine.scheduler import Scheduler, SchedulerPolicy
from kolosal.toolcalls import (
    OutputFormat,
    OutputParser,
    ToolCallStreamParser,
    ToolFamily,
    aggregate,
    parse_output,
    parse_tool_calls,
)
from kolosal.toolcalls.output import RepeatWatch, repeat_watch
from kolosal.toolcalls.render import format_tool_calls

from ..engine.fakes import FakeMemory
from .cases import TOOL_NAMES

PARIS = ("get_weather", '{"city": "Paris"}')
ROME = ("get_weather", '{"city": "Rome"}')
TIME = ("get_time", "{}")
HERMES = OutputFormat(ToolFamily.HERMES, TOOL_NAMES)


def calls_of(text: str, family: ToolFamily) -> list[tuple[str, str]]:
    return [(c.name, c.arguments) for c in parse_tool_calls(text, family, TOOL_NAMES).tool_calls]


def streamed(text: str, family: ToolFamily, fmt: OutputFormat | None = None) -> list[tuple[str, str]]:
    parser = OutputParser(fmt or OutputFormat(family, TOOL_NAMES))
    events = [event for char in text for event in parser.feed(char)] + parser.finish()
    return [(c.name, c.arguments) for c in aggregate(events).tool_calls]


@pytest.mark.parametrize("family", list(ToolFamily))
@pytest.mark.parametrize(("written", "kept"), [
    ([PARIS, PARIS], [PARIS]),
    ([PARIS, PARIS, PARIS, PARIS], [PARIS]),
    ([PARIS, ROME, PARIS, TIME], [PARIS, ROME]),       # the first repeat ends it: TIME is dropped
    ([PARIS, ROME, TIME], [PARIS, ROME, TIME]),        # distinct calls are all kept
    ([TIME, TIME], [TIME]),
], ids=["twice", "four-times", "repeat-ends-it", "distinct", "no-arguments"])
def test_a_repeated_call_ends_the_output(family: ToolFamily, written: list[tuple[str, str]],
                                         kept: list[tuple[str, str]]) -> None:
    text = format_tool_calls(family, written)
    assert calls_of(text, family) == kept
    assert streamed(text, family) == kept  # character by character: the same


def test_same_arguments_in_another_key_order_are_a_repeat() -> None:
    text = format_tool_calls(ToolFamily.HERMES, [("search", '{"query": "a", "limit": 2}'),
                                                 ("search", '{"limit": 2, "query": "a"}')])
    assert calls_of(text, ToolFamily.HERMES) == [("search", '{"query": "a", "limit": 2}')]


def test_same_name_other_arguments_is_not_a_repeat() -> None:
    text = format_tool_calls(ToolFamily.HERMES, [("search", '{"query": "a"}'), ("search", '{"query": "a "}'),
                                                 ("search", '{"query": 1}'), ("search", '{"query": true}')])
    assert len(calls_of(text, ToolFamily.HERMES)) == 4


def test_a_repeat_inside_one_mistral_list_ends_it() -> None:
    text = '[TOOL_CALLS][{"name": "get_time", "arguments": {}}, {"name": "get_time", "arguments": {}}]'
    assert calls_of(text, ToolFamily.MISTRAL) == [TIME]


def test_text_after_a_repeat_is_never_content() -> None:
    """Free ("auto") output: prose after the repeated call is dropped too (the output ended)."""
    call = format_tool_calls(ToolFamily.HERMES, [PARIS])
    text = f"Let me check.\n{call}\n{call}\nThe weather is nice."
    whole = parse_output(text, HERMES)
    assert (whole.content, [(c.name, c.arguments) for c in whole.tool_calls]) == ("Let me check.", [PARIS])
    assert streamed(text, ToolFamily.HERMES) == [PARIS]


def test_the_parser_says_it_ended_and_takes_nothing_more() -> None:
    parser = ToolCallStreamParser(ToolFamily.HERMES, TOOL_NAMES)
    call = format_tool_calls(ToolFamily.HERMES, [PARIS])
    assert len(parser.feed(call)) == 2 and not parser.repeated and parser.settled
    assert parser.feed("\n" + call[:20]) == [] and not parser.settled  # a call half read
    assert parser.feed(call[20:]) == [] and parser.repeated
    assert parser.feed(call + "prose") == [] and parser.finish() == []


def test_calls_only_output_ends_at_a_repeat_too() -> None:
    fmt = OutputFormat(ToolFamily.GEMMA, TOOL_NAMES, calls_only=True)
    text = format_tool_calls(ToolFamily.GEMMA, [PARIS, ROME, ROME, TIME])
    assert streamed(text, ToolFamily.GEMMA, fmt) == [PARIS, ROME]


@pytest.mark.parametrize("family", list(ToolFamily))
def test_max_calls_ends_the_output_after_that_many(family: ToolFamily) -> None:
    text = format_tool_calls(family, [PARIS, ROME, TIME])
    for max_calls, kept in ((1, [PARIS]), (2, [PARIS, ROME]), (3, [PARIS, ROME, TIME])):
        fmt = OutputFormat(family, TOOL_NAMES, max_calls=max_calls)
        assert streamed(text, family, fmt) == kept
        assert [(c.name, c.arguments) for c in parse_output(text, fmt).tool_calls] == kept


def test_the_watch_bills_every_token_of_the_last_allowed_call() -> None:
    watch = RepeatWatch(OutputFormat(ToolFamily.HERMES, TOOL_NAMES, max_calls=1))
    call = format_tool_calls(ToolFamily.HERMES, [PARIS])
    assert [watch.feed(call[:15], 1), watch.feed(call[15:], 2)] == [None, 2]


def test_no_watch_without_tool_parsing() -> None:
    assert repeat_watch(OutputFormat()) is None
    factory = repeat_watch(HERMES)
    assert factory is not None and factory() is not factory()  # one per choice


def test_the_watch_bills_up_to_where_the_repeat_began() -> None:
    watch = RepeatWatch(HERMES)
    call = format_tool_calls(ToolFamily.HERMES, [PARIS])
    pieces = [call[:15], call[15:], "\n", call[:15], call[15:30], call[30:], "never fed"]
    results = [watch.feed(piece, num_tokens) for num_tokens, piece in enumerate(pieces[:-1], start=1)]
    assert results == [None, None, None, None, None, 3]  # the call and the newline after it


# -- in the engine: the watch ends the request ---------------------------------------------------------
CALL = format_tool_calls(ToolFamily.HERMES, [PARIS])
PIECES = {10: CALL[:12], 11: CALL[12:], 12: "\n", 13: CALL[:20], 14: CALL[20:], 15: "\n"}


def scheduler() -> Scheduler:
    return Scheduler(2, 64, 8, FakeMemory(), piece_of=lambda t, special: PIECES.get(t, f"<{t}>").encode(),
                     is_eog=lambda t: t == 0, clock=lambda: 0.0, policy=SchedulerPolicy())


@pytest.mark.parametrize("speculated", [False, True], ids=["one-a-step", "all-in-one-step"])
def test_the_engine_stops_at_the_repeat_and_bills_none_of_it(speculated: bool) -> None:
    engine = scheduler()
    request = Request("r", [1, 2, 3], SamplingParams(max_tokens=50, temperature=0.0,
                                                     watch=repeat_watch(HERMES)), 0.0)
    engine.add(request)
    emissions = []
    tokens = itertools.chain([10, 11, 12, 13, 14, 15, 16], itertools.repeat(16))
    while not request.is_finished:
        plan = engine.schedule()
        assert plan is not None
        if speculated and request.num_computed == request.num_prompt:
            emissions += engine._advance_many(request, [11, 12, 13, 14, 15, 16])  # a draft accepted whole
            break
        emissions += engine.update(plan, StepOutput(np.array([next(tokens)])))
    finish = emissions[-1].event
    assert isinstance(finish, FinishEvent) and finish.finish_reason is FinishReason.STOP
    assert request.status is RequestStatus.FINISHED and request.num_generated == 5  # no token after 14
    assert finish.usage.completion_tokens == 3  # the call and its newline: the repeat is not billed
    text = "".join(e.event.text for e in emissions if isinstance(e.event, (TokenEvent, FinishEvent)))
    assert text == CALL + "\n" + CALL
    assert [(c.name, c.arguments) for c in parse_output(text, HERMES).tool_calls] == [PARIS]
    assert engine.kv.slots.num_free == 2
