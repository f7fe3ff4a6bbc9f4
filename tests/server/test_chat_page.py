"""The built-in chat page, driven in a real headless browser (Debian's chromium), on the
quick start's server: the instruct model is the page's default engine."""
from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest
from playwright.async_api import Locator, Page, async_playwright

from ..server_process import INSTRUCT_ENGINE, ServerProcess, wait_idle

pytestmark = pytest.mark.model  # every test here needs the model: the pure lane skips the file

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def test_openapi_document(server: ServerProcess) -> None:
    document = httpx.get(f"{server.base_url}/openapi.json").json()
    assert document["openapi"].startswith("3.")
    assert {"/v1/chat/completions", "/v1/completions", "/engines", "/v1/health"} <= set(document["paths"])
    chat_schema = document["components"]["schemas"]["ChatCompletionRequest"]
    assert "messages" in chat_schema["required"] and "temperature" in chat_schema["properties"]


@asynccontextmanager
async def chat_page(server: ServerProcess) -> AsyncIterator[tuple[Page, list[str]]]:
    """The chat page open in headless chromium, engines listed; yields it and its JS errors."""
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM,
                                                   args=["--no-sandbox", "--disable-gpu"])
        try:
            page = await browser.new_page()
            page_errors: list[str] = []
            page.on("pageerror", lambda error: page_errors.append(str(error)))
            await page.goto(server.base_url + "/")
            await page.wait_for_function(
                "document.querySelectorAll('#engine option').length > 0", timeout=20_000)
            options = await page.eval_on_selector_all("#engine option", "els => els.map(e => e.value)")
            assert options[0] == INSTRUCT_ENGINE  # selected by default
            assert await page.eval_on_selector("#engine", "el => el.value") == INSTRUCT_ENGINE
            yield page, page_errors
        finally:
            await browser.close()


async def send_message(page: Page, text: str, max_tokens: int) -> Locator:
    """Type a message, press Enter; returns the reply's meta line once tokens stream in."""
    await page.fill("#maxtokens", str(max_tokens))
    await page.fill("#prompt", text)
    await page.press("#prompt", "Enter")
    await page.wait_for_selector(".msg.user")
    meta = page.locator(".msg.assistant .meta")
    await meta.filter(has_text="tok/s").wait_for(timeout=60_000)
    return meta


async def test_chat_page_streams_a_reply(bundled_server: ServerProcess) -> None:
    server = bundled_server
    page_html = httpx.get(server.base_url + "/")
    assert page_html.status_code == 200 and "<script>" in page_html.text
    assert "http://" not in page_html.text and "https://" not in page_html.text  # no CDN
    async with chat_page(server) as (page, page_errors):
        meta = await send_message(page, "Hello! Say something nice.", max_tokens=48)
        await page.wait_for_function(
            "document.querySelector('.msg.assistant .meta').dataset.tokens !== undefined",
            timeout=120_000)
        tokens = int(await meta.get_attribute("data-tokens") or "0")
        assert 0 < tokens <= 48
        assert await page.locator(".msg.error").count() == 0
        assert not page_errors
        screenshot = await page.screenshot()
        assert screenshot[:8] == b"\x89PNG\r\n\x1a\n"


async def test_chat_page_stop_button_ends_the_stream_and_frees_the_slot(
        bundled_server: ServerProcess) -> None:
    server = bundled_server
    async with chat_page(server) as (page, page_errors):
        meta = await send_message(page, "Write a very long story about the sea.", max_tokens=4000)
        status = httpx.get(f"{server.base_url}/engines/{INSTRUCT_ENGINE}/status").json()
        assert status["stats"]["slots_busy"] == 1
        await page.click("#stop")
        await page.wait_for_function(
            "document.querySelector('.msg.assistant .meta').dataset.stopped === 'true'", timeout=20_000)
        assert await meta.get_attribute("data-tokens") is None  # it did not run to the end
        assert await page.locator("#stop").is_hidden()
        assert await page.locator(".msg.error").count() == 0
        assert not page_errors
    status = await asyncio.to_thread(wait_idle, server.base_url, INSTRUCT_ENGINE)
    assert status["stats"]["slots_busy"] == 0


@pytest.mark.parametrize("path", ["/", "/openapi.json"])
def test_public_pages_need_no_key(keyed_server: ServerProcess, path: str) -> None:
    assert httpx.get(keyed_server.base_url + path).status_code == 200
    assert httpx.get(keyed_server.base_url + "/metrics").status_code == 401
