"""Headless Chromium for the browser tests: Debian's chromium (`make browser`) driven by the
`playwright` package through `executable_path` (no `playwright install`, no download)."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from typing import Any

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or "/usr/bin/chromium"
LAUNCH_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def block_network(page: Any, allowed: Sequence[str] = ("file:", "data:", "blob:")) -> list[str]:
    """Abort every request of `page` whose URL does not start with one of `allowed`, as a
    firewall would; returns the (growing) list of the URLs it refused."""
    refused: list[str] = []

    def route(request_route: Any) -> None:
        url = request_route.request.url
        if url.startswith(tuple(allowed)):
            request_route.continue_()
        else:
            refused.append(url)
            request_route.abort()

    page.route("**/*", route)
    return refused
