"""Headless Chromium for the browser tests (Debian's chromium driven by playwright): skipped locally
when it is not installed, failed under CI (`tests.conftest.missing_service`). Holds no tests."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import AsyncIterator

from playwright.async_api import Browser, async_playwright

from tests.conftest import missing_service

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@contextlib.asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    """A launched headless chromium, closed after the block."""
    if shutil.which(CHROMIUM) is None:
        missing_service(f"chromium not installed at {CHROMIUM}")
    async with async_playwright() as pw:
        launched = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield launched
        finally:
            await launched.close()
