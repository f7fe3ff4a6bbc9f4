"""The built-in chat page, driven in a real headless browser (Debian's chromium)."""
from __future__ import annotations

import shutil

import httpx
import pytest
from playwright.async_api import async_playwright

from ..server_process import ENGINE, ServerProcess

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def test_openapi_document(server: ServerProcess) -> None:
    document = httpx.get(f"{server.base_url}/openapi.json").json()
    assert document["openapi"].startswith("3.")
    assert {"/v1/chat/completions", "/v1/completions", "/engines", "/v1/health"} <= set(document["paths"])
    chat_schema = document["components"]["schemas"]["ChatCompletionRequest"]
    assert "messages" in chat_schema["required"] and "temperature" in chat_schema["properties"]


async def test_chat_page_streams_a_reply(server: ServerProcess) -> None:
    page_html = httpx.get(server.base_url + "/")
    assert page_html.status_code == 200 and "<script>" in page_html.text
    assert "http://" not in page_html.text and "https://" not in page_html.text  # no CDN
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM,
                                                   args=["--no-sandbox", "--disable-gpu"])
        try:
            page = await browser.new_page()
            console_errors: list[str] = []
            page.on("pageerror", lambda error: console_errors.append(str(error)))
            await page.goto(server.base_url + "/")
            await page.wait_for_function(
                "document.querySelectorAll('#engine option').length > 0", timeout=20_000)
            options = await page.eval_on_selector_all("#engine option", "els => els.map(e => e.value)")
            assert ENGINE in options
            await page.select_option("#engine", ENGINE)
            await page.fill("#prompt", "Hello! Say something nice.")
            await page.press("#prompt", "Enter")
            await page.wait_for_selector(".msg.user")
            meta = page.locator(".msg.assistant .meta")
            await meta.filter(has_text="tok/s").wait_for(timeout=60_000)
            await page.wait_for_function(
                "document.querySelector('.msg.assistant .meta').dataset.tokens !== undefined",
                timeout=60_000)
            tokens = int(await meta.get_attribute("data-tokens") or "0")
            assert tokens > 0
            assert await page.locator(".msg.error").count() == 0
            assert not console_errors
            screenshot = await page.screenshot()
            assert screenshot[:8] == b"\x89PNG\r\n\x1a\n"
        finally:
            await browser.close()


@pytest.mark.parametrize("path", ["/", "/openapi.json"])
def test_public_pages_need_no_key(keyed_server: ServerProcess, path: str) -> None:
    assert httpx.get(keyed_server.base_url + path).status_code == 200
    assert httpx.get(keyed_server.base_url + "/metrics").status_code == 401
