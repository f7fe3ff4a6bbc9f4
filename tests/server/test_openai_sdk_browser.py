"""The npm `openai` SDK in a real browser (issue 27, item 3): a page served from another
origin imports the package's ESM build and calls `chat.completions.create`, streamed and
not, with `dangerouslyAllowBrowser: true` against a server started with --cors-origins and
--cors-credentials. The SDK sends its own `x-stainless-*` headers and an Authorization
header, so every call is preflighted: before, the preflight's fixed header list refused
them ("Request header field x-stainless-os is not allowed"). A credentialed `fetch`
(`credentials: "include"`) needs Access-Control-Allow-Credentials.

The package is fetched once by `npm install` into the cache (~/.cache/kolosal/npm, like
the models); the test skips only where npm is missing."""
from __future__ import annotations

import contextlib
import functools
import http.server
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Request, async_playwright

from kolosal.llama.loader import cache_dir

from ..server_process import ENGINE, ServerProcess, free_port, start_server, stop_server

pytestmark = pytest.mark.model

OPENAI_NPM_VERSION = "7.60.0"  # pinned: the SDK whose browser build is tested
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
API_KEY = "sk-browser-test"
MESSAGES = [{"role": "user", "content": "Say hello."}]


@pytest.fixture(scope="session")
def openai_npm_package() -> Path:
    """node_modules/openai of the pinned version, installed into the cache on first use."""
    target = cache_dir() / "npm" / f"openai-{OPENAI_NPM_VERSION}"
    package = target / "node_modules" / "openai"
    if (package / "index.mjs").is_file():
        return package
    npm = shutil.which("npm")
    if npm is None:
        pytest.skip("npm is not installed: the openai npm package cannot be fetched for this test")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f"openai-{OPENAI_NPM_VERSION}.", dir=target.parent))
    try:
        subprocess.run([npm, "install", "--prefix", str(staging), f"openai@{OPENAI_NPM_VERSION}",
                        "--no-save", "--no-package-lock", "--no-audit", "--no-fund",
                        "--ignore-scripts", "--legacy-peer-deps", "--loglevel", "error"],
                       check=True, timeout=600, capture_output=True)
        with contextlib.suppress(OSError):  # another run installed it meanwhile: keep theirs
            staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    assert (package / "index.mjs").is_file(), f"npm installed no ESM build under {package}"
    return package


class StaticFiles(http.server.SimpleHTTPRequestHandler):
    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map,
                      ".mjs": "text/javascript", ".js": "text/javascript"}  # module scripts

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
        pass


@pytest.fixture(scope="module")
def page_origin(openai_npm_package: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A tiny static server on another port: an empty page and the SDK's files."""
    root = tmp_path_factory.mktemp("page")
    (root / "index.html").write_text(  # no favicon request (a 404 in the console)
        '<!doctype html><link rel="icon" href="data:,"><title>openai sdk</title>')
    (root / "openai").symlink_to(openai_npm_package, target_is_directory=True)
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", free_port()), functools.partial(StaticFiles, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    thread.join()


@pytest.fixture(scope="module")
def cors_server(model_path: Path, page_origin: str,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    running = start_server(model_path, tmp_path_factory.mktemp("cors") / "server.log",
                           "--parallel", "2", "--api-key", API_KEY, "--cors-origins", page_origin,
                           "--cors-credentials")
    yield running
    stop_server(running)


SDK_CALLS = """async ({baseURL, apiKey, model, messages}) => {
    const { default: OpenAI } = await import('/openai/index.mjs');
    const client = new OpenAI({ baseURL, apiKey, dangerouslyAllowBrowser: true, maxRetries: 0 });
    const whole = await client.chat.completions.create({ model, messages, max_tokens: 8 });
    const stream = await client.chat.completions.create(
        { model, messages, max_tokens: 8, stream: true, stream_options: { include_usage: true } });
    let text = '', chunks = 0, finish = null, usage = null;
    for await (const chunk of stream) {
        chunks += 1;
        if (chunk.usage) usage = chunk.usage;
        for (const choice of chunk.choices) {
            text += choice.delta.content ?? '';
            finish = choice.finish_reason ?? finish;
        }
    }
    return { whole: { content: whole.choices[0].message.content,
                      finish: whole.choices[0].finish_reason, usage: whole.usage },
             streamed: { text, chunks, finish, usage } };
}"""

CREDENTIALED_FETCH = """async ({baseURL, apiKey, model, messages}) => {
    const models = await fetch(`${baseURL}/models`,
        { credentials: 'include', headers: { Authorization: `Bearer ${apiKey}` } });
    const chat = await fetch(`${baseURL}/chat/completions`, {
        method: 'POST', credentials: 'include',
        headers: { Authorization: `Bearer ${apiKey}`, 'Content-Type': 'application/json' },
        body: JSON.stringify({ model, messages, max_tokens: 4 }) });
    return { models: [models.status, (await models.json()).data.map(m => m.id)],
             chat: [chat.status, (await chat.json()).choices[0].message.content] };
}"""


async def test_openai_npm_sdk_in_a_browser_from_another_origin(cors_server: ServerProcess,
                                                              page_origin: str) -> None:
    arguments = {"baseURL": f"{cors_server.base_url}/v1", "apiKey": API_KEY, "model": ENGINE,
                 "messages": MESSAGES}
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM,
                                                   args=["--no-sandbox", "--disable-gpu"])
        try:
            page = await browser.new_page()
            problems: list[str] = []
            page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
            page.on("console", lambda message: problems.append(f"console: {message.text}")
                    if message.type == "error" else None)
            sent: list[Request] = []
            page.on("request", lambda request: sent.append(request)
                    if request.url.startswith(cors_server.base_url) else None)
            await page.goto(f"{page_origin}/index.html")

            result = await page.evaluate(SDK_CALLS, arguments)
            whole, streamed = result["whole"], result["streamed"]
            assert whole["content"] and whole["finish"] in ("stop", "length"), whole
            assert 0 < whole["usage"]["completion_tokens"] <= 8, whole
            assert streamed["text"] and streamed["finish"] in ("stop", "length"), streamed
            assert streamed["chunks"] >= 2 and 0 < streamed["usage"]["completion_tokens"] <= 8
            # The SDK's own headers crossed origins: each call needed the preflight to allow them.
            posts = [r for r in sent if r.method == "POST"]
            assert len(posts) == 2, [r.url for r in sent]
            for request in posts:
                headers = await request.all_headers()
                assert "x-stainless-os" in headers and headers["origin"] == page_origin, headers

            fetched = await page.evaluate(CREDENTIALED_FETCH, arguments)
            assert fetched["models"] == [200, [ENGINE]], fetched
            assert fetched["chat"][0] == 200 and fetched["chat"][1], fetched
            assert not problems, problems
        finally:
            await browser.close()
