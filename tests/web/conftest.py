"""Browser fixtures: Debian's Chromium driven by Playwright's async API, offline and watched.

Playwright never downloads a browser here: it launches `/usr/bin/chromium` (installed by
`scripts/install-browser.sh`, which `make test` runs). A missing or broken Chromium skips
the browser tests with the reason, except under `CI=true`, where it fails them.

Every context routes its requests through `Watch.keep_on_loopback`: anything not addressed
to 127.0.0.1 is aborted and recorded, so a console that pulls a script from a CDN fails its
tests instead of quietly working on a developer's laptop. Console errors and uncaught page
errors are recorded too; a test ends with all three lists empty.
"""

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from playwright.async_api import (
    Browser,
    BrowserContext,
    ConsoleMessage,
    Dialog,
    Page,
    Response,
    Route,
    ViewportSize,
    WebError,
    async_playwright,
)
from playwright.async_api import Error as PlaywrightError

from tests.services import unusable

CHROMIUM = Path("/usr/bin/chromium")
# Root in a container: no user namespaces for the sandbox, no GPU, a small /dev/shm.
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]
VIEWPORT: ViewportSize = {"width": 1280, "height": 800}
LOOPBACK = "127.0.0.1"
ACTION_TIMEOUT_MS = 20_000
# Chromium reports a document answered with 4xx/5xx as a console error; a test that opens a
# refusal on purpose checks the status itself, so those lines are not errors of the page.
FAILED_LOAD = "Failed to load resource: the server responded with a status of"


@dataclass
class Watch:
    """What one browser context did that a test must not see: errors and outside requests."""

    console_errors: list[tuple[str, str]] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    outside_requests: list[str] = field(default_factory=list)
    refused_documents: set[str] = field(default_factory=set)

    async def keep_on_loopback(self, route: Route) -> None:
        """Let requests to 127.0.0.1 through; abort and record every other one."""
        url = route.request.url
        if urlsplit(url).hostname == LOOPBACK:
            await route.continue_()
        else:
            self.outside_requests.append(url)
            await route.abort("blockedbyclient")

    def on_console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.console_errors.append((message.text, message.location.get("url", "")))

    def on_web_error(self, error: WebError) -> None:
        self.page_errors.append(str(error.error))

    def on_response(self, response: Response) -> None:
        if response.request.resource_type == "document" and response.status >= 400:
            self.refused_documents.add(response.url)

    def problems(self) -> list[str]:
        """Console errors, uncaught page errors and outside requests, one line each."""
        lines = [
            f"console error: {text} ({url})"
            for text, url in self.console_errors
            if not (text.startswith(FAILED_LOAD) and url in self.refused_documents)
        ]
        lines += [f"uncaught page error: {error}" for error in self.page_errors]
        lines += [f"request outside loopback: {url}" for url in self.outside_requests]
        return lines

    def forget(self) -> None:
        """Drop everything recorded so far (after a test provoked it on purpose)."""
        self.console_errors.clear()
        self.page_errors.clear()
        self.outside_requests.clear()


async def accept_dialog(dialog: Dialog) -> None:
    """Accept confirm() prompts as a user would (Playwright dismisses them by default)."""
    await dialog.accept()


class Browsing:
    """The pages one test opens, each in a fresh watched context of its own (own cookies)."""

    def __init__(self, browser: Browser) -> None:
        self.browser = browser
        self.contexts: list[BrowserContext] = []
        self.watches: dict[Page, Watch] = {}

    async def new_page(self, extra_http_headers: dict[str, str] | None = None) -> Page:
        """A page in a new context: 1280×800, clipboard allowed, loopback only, watched."""
        context = await self.browser.new_context(
            viewport=VIEWPORT,
            permissions=["clipboard-read", "clipboard-write"],
            extra_http_headers=extra_http_headers,
        )
        self.contexts.append(context)
        context.set_default_timeout(ACTION_TIMEOUT_MS)
        watch = Watch()
        await context.route("**/*", watch.keep_on_loopback)
        context.on("console", watch.on_console)
        context.on("weberror", watch.on_web_error)
        context.on("response", watch.on_response)
        context.on("dialog", accept_dialog)
        page = await context.new_page()
        self.watches[page] = watch
        return page

    def watch(self, page: Page) -> Watch:
        """The watch of the context `page` was opened in."""
        return self.watches[page]

    def problems(self) -> list[str]:
        """Every page's problems so far."""
        return [line for watch in self.watches.values() for line in watch.problems()]

    async def close(self) -> None:
        for context in self.contexts:
            await context.close()


def launch_failure(message: str) -> str:
    """The gist of Playwright's launch error: its first line, the browser's stderr, its exit."""
    lines = message.splitlines()
    telling = [line.strip() for line in lines[1:] if "[err]" in line or "did exit" in line]
    return " | ".join([lines[0], *dict.fromkeys(telling)][:6]) if lines else "no message"


@pytest.fixture(scope="session")
async def browser() -> AsyncIterator[Browser]:
    """Debian's Chromium, headless, for the whole session (skipped, or failed on CI, if absent)."""
    if not CHROMIUM.exists():
        unusable(f"{CHROMIUM} not found: run scripts/install-browser.sh (apt-get install chromium)")
    async with async_playwright() as playwright:
        try:
            chromium = await playwright.chromium.launch(
                executable_path=CHROMIUM, headless=True, args=LAUNCH_ARGS
            )
        except PlaywrightError as error:
            unusable(f"{CHROMIUM} did not launch: {launch_failure(error.message)}")
        yield chromium
        await chromium.close()


@pytest.fixture
async def browsing(browser: Browser) -> AsyncIterator[Browsing]:
    """Opens the test's pages; at the end, none may have logged an error or left loopback."""
    browsing = Browsing(browser)
    yield browsing
    problems = browsing.problems()
    await browsing.close()
    assert problems == [], "\n".join(problems)


@pytest.fixture
async def page(browsing: Browsing) -> Page:
    """The test's first page, in a fresh context."""
    return await browsing.new_page()
