"""A chat request's way to the engine: the chat template renders its messages (and tools),
the prompt is tokenized, and the sampling parameters carry the grammar of its
response_format or enforced tool calls. Shared by chat completions and the Responses API."""
from __future__ import annotations

from dataclasses import replace

from ...chat_template import ChatTemplate, ChatTemplateError
from ...engine import AsyncEngine, SamplingParams
from ...toolcalls.output import OutputFormat
from ..errors import bad_request
from ..records import log_prompt
from .constraints import OutputShape, request_grammar
from .protocol import ChatCompletionRequest, NamedToolChoice


async def prepare_chat(engine: AsyncEngine, body: ChatCompletionRequest
                       ) -> tuple[list[int], SamplingParams, OutputFormat]:
    """Everything a chat generation needs before it is submitted: the rendered prompt's
    tokens, the sampling parameters (with the grammar of response_format or enforced tool
    calls) and what the output may hold."""
    template = ChatTemplate.for_model(engine.info.chat_template, engine.info.architecture,
                                      engine.info.bos_token, engine.info.eos_token)
    prompt, prompt_ids, output = await tokenize_chat(engine, template, body)
    special = engine.special_tokens(output.markers)
    shape = OutputShape(template.tool_family, template.reasoning_mode(prompt), special)
    grammar = await request_grammar(body, shape)
    params = replace(body.sampling_params(body.resolved_max_tokens(engine.info.n_ctx),
                                          engine.info.n_vocab, grammar),
                     special_as_text=bool(special))
    return prompt_ids, params, output


async def tokenize_chat(engine: AsyncEngine, template: ChatTemplate,
                        body: ChatCompletionRequest) -> tuple[str, list[int], OutputFormat]:
    """The prompt, its tokens, and what the output may hold besides content (tool calls in
    the model family's format, a reasoning block)."""
    tools = [tool.model_dump() for tool in body.active_tools()]
    messages = [message.template_message() for message in body.messages]
    try:
        prompt = template.render(messages, tools=tools or None,
                                 parallel_tool_calls=body.parallel_tool_calls,
                                 extra=body.template_variables())
    except ChatTemplateError as error:
        raise bad_request(str(error), param="messages") from None
    log_prompt(prompt)
    choice = body.tool_choice
    output = template.output_format(prompt, tools, choice.model_dump() if isinstance(choice, NamedToolChoice)
                                    else choice or "auto", reasoning_inline=body.reasoning_format == "none")
    # Templates usually write the BOS text themselves: never add a second BOS.
    info = engine.info
    add_special = not (info.bos_token and prompt.startswith(info.bos_token))
    return prompt, await engine.tokenize(prompt, add_special=add_special, parse_special=True), output

