"""The one step between a validated request and the engine: what a generation needs
before it is submitted, for chat completions, the Responses API (its chat request) and
text completions.

Per engine, once (``engine_view``, cached by the engine object for as long as it lives):
the chat template (the GGUF's, or the built-in one of its architecture), the tool family
it writes, and which of that family's markers (and the reasoning markers) are single
special tokens of the vocabulary (the engine's generic ``special_tokens`` lookup; which
texts to ask about is the tool-call layer's knowledge, and stays here).

Per request (``prepare_chat``, ``prepare_completion``): the prompts as token ids (mixed
prompt lists tokenized piece by piece), the SamplingParams complete (the engine's sampling
defaults for the fields the request omits, ``logit_bias`` resolved to token ids, max_tokens
by the request, else --max-tokens-default, else the request kind's default, the grammar of
``constraints.request_grammar``, and ``special_as_text`` when the output may hold a marker
that is a special token) and, for chat, the OutputFormat the writer parses with. Nothing
is checked against the engine's limits here but logit_bias's token ids: the engine call
that takes the prompts (``AsyncEngine.generate``) checks them, once. Refusals made here
name the field as the request spells it (``PROMPT_FIELD``, ``FORMAT_FIELD``)."""
from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, replace
from weakref import WeakKeyDictionary

from quart import current_app

from ...chat_template import ChatTemplate, ChatTemplateError
from ...engine import AsyncEngine, SamplingParams
from ...toolcalls.families import ToolFamily, markers
from ...toolcalls.output import OutputFormat, repeat_watch
from ..caller import default_lora
from ..errors import bad_request
from ..records import log_prompt
from .constraints import OutputShape, json_answer, request_grammar
from .parts import NamedToolChoice
from .protocol import ChatCompletionRequest, CompletionRequest, SamplingFields


@dataclass(frozen=True, slots=True)
class EngineView:
    """What preparing a request needs to know about one loaded model."""

    template: ChatTemplate
    family: ToolFamily
    special_tokens: Mapping[str, int]  # marker text -> id, for every marker that is one token
    bos_token: str

    def special_for(self, output: OutputFormat) -> dict[str, int]:
        """The markers this output may hold that are special tokens: the grammar asks for
        them by id, and the engine must render them as text."""
        return {text: self.special_tokens[text] for text in output.markers if text in self.special_tokens}


_VIEWS: WeakKeyDictionary[AsyncEngine, EngineView] = WeakKeyDictionary()


def engine_view(engine: AsyncEngine) -> EngineView:
    """The engine's view, computed on its first request and kept while the engine lives (a
    reloaded model is a new engine object, so a new view)."""
    view = _VIEWS.get(engine)
    if view is None:
        info = engine.info
        template = ChatTemplate.for_model(info.chat_template, info.architecture, info.bos_token,
                                          info.eos_token)
        family = template.tool_family
        view = EngineView(template, family, engine.special_tokens(markers(family, reasoning=True)),
                          info.bos_token)
        _VIEWS[engine] = view
    return view


@dataclass(frozen=True, slots=True)
class Prepared:
    """A request as the engine takes it: one token list per prompt, the parameters every
    prompt runs with, and (chat) what the output may hold besides content."""

    prompts: list[list[int]]
    params: SamplingParams
    output: OutputFormat


async def prepare_chat(engine: AsyncEngine, body: ChatCompletionRequest) -> Prepared:
    """The rendered prompt's tokens, the sampling parameters (with the grammar of the
    response format and/or the tool calls) and what the output may hold."""
    view = engine_view(engine)
    prompt, output = render_chat(view, body)
    fenced = json_answer(body)  # the grammar allows a fence around the JSON: the writer strips it
    output = replace(output, fenced=fenced)
    # Templates usually write the BOS text themselves: never add a second BOS.
    add_special = not (view.bos_token and prompt.startswith(view.bos_token))
    prompt_ids = await engine.tokenize(prompt, add_special=add_special, parse_special=True)
    special = view.special_for(output)
    shape = OutputShape(view.family, view.template.reasoning_mode(prompt), special, fenced)
    grammar = await request_grammar(body, shape)
    params = body.sampling_params(max_tokens(engine, body), await logit_bias(engine, body), grammar,
                                  special_as_text=bool(special), default_lora=default_lora(),
                                  defaults=engine.sampling_defaults)
    # a call that repeats an earlier one ends the output, in the engine (no tokens for nobody)
    return Prepared([prompt_ids], replace(params, watch=repeat_watch(output)), output)


def max_tokens(engine: AsyncEngine, body: SamplingFields) -> int:
    """The request's max_tokens, else the operator's --max-tokens-default (0: until the end
    of the text or the context), else the request kind's own; at most the context."""
    return body.resolved_max_tokens(engine.info.n_ctx, current_app.config["SETTINGS"].max_tokens_default)


async def logit_bias(engine: AsyncEngine, body: SamplingFields) -> dict[int, float]:
    """The request's logit_bias by token id: a text's bias on every token of its
    tokenization (no BOS, control-token text left as text), as llama-server; a token
    biased more than once gets the sum (-inf stays -inf). An id outside the vocabulary is a
    400 naming logit_bias."""
    n_vocab = engine.info.n_vocab
    bias: dict[int, float] = {}
    for target, value in body.bias_entries():
        if isinstance(target, str):
            tokens = await engine.tokenize(target, add_special=False, parse_special=False)
            await asyncio.sleep(0)  # many short texts: let the loop run between them
        elif target >= n_vocab:
            raise bad_request(f"logit_bias names token id {target}, outside the vocabulary "
                              f"(ids 0 to {n_vocab - 1})", param="logit_bias")
        else:
            tokens = [target]
        for token in tokens:
            bias[token] = bias.get(token, 0.0) + value
    return bias


def render_chat(view: EngineView, body: ChatCompletionRequest) -> tuple[str, OutputFormat]:
    """The prompt, and what the output may hold besides content (tool calls in the model
    family's format, a reasoning block). A template that refuses the conversation is a 400
    naming the request's messages."""
    tools = [tool.model_dump() for tool in body.active_tools()]
    messages = [message.template_message() for message in body.messages]
    try:
        prompt = view.template.render(messages, tools=tools or None,
                                      parallel_tool_calls=body.parallel_tool_calls,
                                      extra=body.template_variables())
    except ChatTemplateError as error:
        raise bad_request(str(error), param=body.PROMPT_FIELD) from None
    log_prompt(prompt)
    choice = body.tool_choice
    output = view.template.output_format(
        prompt, tools, choice.model_dump() if isinstance(choice, NamedToolChoice) else choice or "auto",
        reasoning_inline=body.reasoning_format == "none")
    if output.tool_family is not None and not body.parallel_tool_calls:
        output = replace(output, max_calls=1)  # at most one call, enforced or not
    return prompt, output


async def prepare_completion(engine: AsyncEngine, body: CompletionRequest) -> Prepared:
    """Each prompt's tokens (text is tokenized with BOS, control-token text left as text;
    token ids go as they are, for the engine to check), and the sampling parameters."""
    prompts: list[list[int]] = []
    for prompt in body.prompts():
        if isinstance(prompt, str):
            if not prompt:
                raise bad_request("prompt must not be empty", param="prompt")
            log_prompt(prompt)
            prompts.append(await engine.tokenize(prompt, add_special=True, parse_special=False))
        else:
            prompts.append(await mixed_prompt(engine, prompt))
    grammar = await request_grammar(body)
    params = body.sampling_params(max_tokens(engine, body), await logit_bias(engine, body), grammar,
                                  default_lora=default_lora(), defaults=engine.sampling_defaults)
    return Prepared(prompts, params, OutputFormat())


async def mixed_prompt(engine: AsyncEngine, pieces: list[int | str]) -> list[int]:
    """A prompt of token ids with texts between them, as llama-server's tokenize_mixed: each
    text tokenized where it stands, with BOS only when the prompt starts with a text."""
    tokens: list[int] = []
    for index, piece in enumerate(pieces):
        if isinstance(piece, int):
            tokens.append(piece)
            continue
        log_prompt(piece)
        tokens += await engine.tokenize(piece, add_special=index == 0, parse_special=False)
        await asyncio.sleep(0)  # many short texts: let the loop run between them
    return tokens
