"""Real headless Chromium (Debian's) driven by Playwright, and `fl-sim serve` on the loopback, for the web tests."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.conftest import FL_SIM

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Chromium on this machine's closed network: no background connections, no sandbox as root, a fresh profile.
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def served(runs_dir: Path, port: int | None = None, extra: list[str] | None = None) -> Iterator[str]:
    """`fl-sim serve` on 127.0.0.1 in its own process group; yields its base URL and stops it (by its pid)."""
    port = port or free_port()
    proc = subprocess.Popen([str(FL_SIM), "serve", "--runs-dir", str(runs_dir), "--port", str(port), *(extra or [])],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            try:
                urllib.request.urlopen(base + "/api/runs", timeout=2).read()
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"fl-sim serve did not start: {proc.stdout.read().decode() if proc.stdout else ''}")
                time.sleep(0.2)
        yield base
    finally:
        stop(proc, signal.SIGTERM, 10)


def stop(proc: subprocess.Popen[bytes], sig: int, grace: float) -> None:
    """Stop ``proc``'s process group (started with ``start_new_session``): ``sig``, then SIGKILL after ``grace`` s."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, sig)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@contextmanager
def chromium(width: int = 1360, height: int = 900) -> Iterator[Any]:
    """A page in headless Debian Chromium (Playwright drives the installed browser; it downloads none)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            yield page
        finally:
            browser.close()


def screenshots(runs_dir: Path, run_id: str, user: str, out_dir: Path) -> list[Path]:
    """docs/'s screenshots: the run page and one user's page of ``run_id``, full length, as a user sees them."""
    shots = []
    with served(runs_dir) as base, chromium(width=1280, height=800) as page:
        for name, path in (("web_run.png", f"/runs/{run_id}"), ("web_user.png", f"/runs/{run_id}/users/{user}")):
            page.goto(base + path)
            page.wait_for_load_state("networkidle")
            if name == "web_run.png":
                page.wait_for_selector("#mark-within:not([hidden])", timeout=120_000)
            page.screenshot(path=str(out_dir / name), full_page=True)
            shots.append(out_dir / name)
    return shots


if __name__ == "__main__":  # python -m tests.browser RUNS_DIR RUN_ID USER OUT_DIR
    import sys

    print(*screenshots(Path(sys.argv[1]), sys.argv[2], sys.argv[3], Path(sys.argv[4])), sep="\n")
