"""Headless Chromium for browser tests: Playwright driving the system Chromium.

Facts this is built on (measured on Debian chromium with Playwright):

* Playwright's own browser download fails on these machines; Playwright driving Debian's
  ``/usr/bin/chromium`` (``apt-get install chromium``) through ``executable_path`` works.
* Chromium must run with ``--no-sandbox`` as root, and with the background-networking flags
  below, otherwise it floods the closed network. Each launch gets a new, empty profile.

Without Playwright or a Chromium binary the browser tests are skipped with a message saying
what to install; ``SCOPELOOP_REQUIRE_BROWSER=1`` (CI) turns that skip into a failure.
``SCOPELOOP_CHROMIUM=/path/to/chrome`` picks another binary.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import traceback
from pathlib import Path
from typing import Iterator

import pytest

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts" / "browser"   # git-ignored (/test-artifacts/)

CHROMIUM_FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage",   # small /dev/shm in containers: use /tmp instead
]
CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def _unavailable(reason: str):
    if os.environ.get("SCOPELOOP_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{reason} (SCOPELOOP_REQUIRE_BROWSER=1 forbids skipping browser tests)")
    pytest.skip(reason)


def find_chromium() -> tuple[str | None, str]:
    """(path to the Chromium binary, or None and what to do about it)."""
    configured = os.environ.get("SCOPELOOP_CHROMIUM")
    if configured:
        if not (os.path.isfile(configured) and os.access(configured, os.X_OK)):
            return None, f"SCOPELOOP_CHROMIUM={configured} is not an executable file"
        return configured, ""
    for name in CANDIDATES:
        found = shutil.which(name)
        if found:
            return found, ""
    return None, ("no Chromium found (tried " + ", ".join(CANDIDATES) + "); install it with "
                  "`sudo apt-get install -y chromium` or set SCOPELOOP_CHROMIUM")


def browser_missing() -> str | None:
    """Why browser tests cannot run here, or None when Playwright and Chromium are present."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return ("the Python package `playwright` is not installed (pip install playwright; no "
                "`playwright install` needed: the system Chromium is used)")
    return find_chromium()[1] or None


def skip_module_without_browser() -> None:
    """At import of a browser test module: skip it early (before Label Studio starts)."""
    reason = browser_missing()
    if reason and os.environ.get("SCOPELOOP_REQUIRE_BROWSER") != "1":
        pytest.skip(reason, allow_module_level=True)


@contextlib.contextmanager
def chromium_page(viewport=(1400, 900), timeout_s: float = 60.0) -> Iterator["object"]:
    """A Playwright page in a fresh headless Chromium with a new empty profile."""
    reason = browser_missing()
    if reason:
        _unavailable(reason)
    from playwright.sync_api import sync_playwright
    exe = find_chromium()[0]
    profile = tempfile.mkdtemp(prefix="scopeloop-chromium-")
    try:
        with sync_playwright() as pw:
            ctx = pw.chromium.launch_persistent_context(
                profile, executable_path=exe, headless=True, args=CHROMIUM_FLAGS,
                viewport={"width": viewport[0], "height": viewport[1]},
                timeout=timeout_s * 1000)
            try:
                page = ctx.pages[0] if ctx.pages else ctx.new_page()
                page.set_default_timeout(timeout_s * 1000)
                page.set_default_navigation_timeout(timeout_s * 1000)
                page.console_errors = []   # collected for failure reports
                page.on("console", lambda m: m.type == "error" and page.console_errors.append(m.text))
                page.on("pageerror", lambda e: page.console_errors.append(f"pageerror: {e}"))
                page.on("response", lambda r: r.status >= 400 and page.console_errors.append(
                    f"HTTP {r.status} {r.request.method} {r.url}"))
                yield page
            finally:
                ctx.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def save_artifacts(page, name: str, note: str = "") -> list[Path]:
    """Screenshot + HTML (+ a note, e.g. the failure) under test-artifacts/browser/."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    saved = []
    png, html, txt = (ARTIFACTS / f"{name}{ext}" for ext in (".png", ".html", ".txt"))
    for path in (png, html, txt):
        path.unlink(missing_ok=True)   # never leave a stale artifact from an older run
    try:
        page.screenshot(path=str(png), full_page=True, timeout=20_000)
        saved.append(png)
    except Exception as e:  # a crashed page must not hide the test's own failure
        note += f"\nscreenshot failed: {e!r}"
    try:
        html.write_text(page.content(), encoding="utf-8")
        saved.append(html)
    except Exception as e:
        note += f"\nHTML capture failed: {e!r}"
    errors = getattr(page, "console_errors", [])
    if note or errors:
        txt.write_text(f"url: {page.url}\n{note}\n\nbrowser console errors:\n" + "\n".join(errors),
                       encoding="utf-8")
        saved.append(txt)
    return saved


@contextlib.contextmanager
def artifacts(page, name: str) -> Iterator[None]:
    """On failure save `name`-FAILED.png/.html/.txt (with the error); on success remove them.

    Screenshots of the good state are taken by the test itself (`save_artifacts`).
    """
    try:
        yield
    except BaseException:
        save_artifacts(page, f"{name}-FAILED", traceback.format_exc())
        raise
    for stale in ARTIFACTS.glob(f"{name}-FAILED.*"):
        stale.unlink()


def login(page, base_url: str, username: str, password: str) -> None:
    """Log into Label Studio through its login form (as a person would)."""
    page.goto(f"{base_url}/user/login/")
    page.locator("input[name=email]").fill(username)
    page.locator("input[name=password]").fill(password)
    page.locator("button[type=submit]").click()
    try:
        page.wait_for_url(lambda url: "/user/login" not in url, timeout=30_000)
    except Exception as e:
        error = page.locator(".error, .field_errors, .text-danger").all_inner_texts()
        raise AssertionError(f"Label Studio login as {username!r} failed (still on {page.url}); "
                             f"form errors: {error or 'none shown'}") from e
