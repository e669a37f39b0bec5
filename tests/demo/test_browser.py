"""The chat page in a real headless Chromium (Debian's package), driven by Playwright.

Nothing here downloads a browser: Playwright launches the system binary.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Iterator

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.demo.support import CHAT_STATIC, Child, Launch, start_broker

pytestmark = pytest.mark.browser

CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TIMEOUT_MS = 10_000


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Browser]:
    """Headless Chromium with a fresh profile; skipped only where no Chromium binary exists."""
    if CHROMIUM is None:
        pytest.skip("no Chromium binary (apt-get install chromium, or set CHROMIUM=/path/to/chromium)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS, timeout=30_000)
        yield browser
        browser.close()


def open_chat(browser: Browser, url: str, name: str, room: str | None = None) -> Page:
    """A page in its own browser context (own storage) that joined a room as ``name``."""
    page = browser.new_context(viewport={"width": 1000, "height": 640}).new_page()
    page.set_default_timeout(TIMEOUT_MS)
    expect.set_options(timeout=TIMEOUT_MS)
    page.goto(url)
    page.fill("#name", name)
    if room is not None:
        page.fill("#room", room)
    page.click("#join-form button[type=submit]")
    expect(page.locator("#status")).to_have_attribute("data-state", "open")
    expect(page.locator("#member-list")).to_contain_text(name)
    return page


def test_two_tabs_chat(browser: Browser, demo: tuple[Child, str, int], tmp_path: Path) -> None:
    _, _, port = demo
    ada = open_chat(browser, f"http://127.0.0.1:{port}/", "Ada", room="garden")
    assert ada.url.endswith("#garden")
    grace = open_chat(browser, ada.url, "Grace")

    expect(ada.locator("#messages .event").last).to_have_text("Grace joined.")
    expect(ada.locator("#member-list .member-name")).to_have_text(["Ada", "Grace"])
    expect(ada.locator("#member-count")).to_have_text("2")

    markup = "<b>Hello</b> Ada, <img src=x onerror=alert(1)>"
    grace.fill("#text", markup)
    grace.press("#text", "Enter")
    received = ada.locator("#messages .message").last
    expect(received.locator(".sender")).to_have_text("Grace")
    expect(received.locator(".text")).to_have_text(markup)
    assert ada.locator("#messages b, #messages img").count() == 0
    expect(grace.locator("#messages .message.mine .text")).to_have_text(markup)

    ada.fill("#text", "Hi Grace, schön dich zu sehen!")
    ada.press("#text", "Enter")
    expect(grace.locator("#messages .message .text").last).to_have_text("Hi Grace, schön dich zu sehen!")
    expect(ada.locator("#messages .message.mine .text")).to_have_text("Hi Grace, schön dich zu sehen!")
    ada.screenshot(path=str(tmp_path / "chat-ada.png"))
    grace.screenshot(path=str(tmp_path / "chat-grace.png"))

    grace.click("#leave")
    expect(ada.locator("#messages .event").last).to_have_text("Grace left.")
    expect(ada.locator("#member-list .member-name")).to_have_text(["Ada"])


def test_the_page_reconnects_after_a_broker_restart(browser: Browser, launch: Launch, tmp_path: Path) -> None:
    broker = start_broker(launch, "--static", str(CHAT_STATIC))
    backend = launch(["-m", "examples.chat", "--no-broker", "--tcp-port", str(broker.tcp_port)], name="backend")
    backend.wait_for_output("Chat backend running")
    page = open_chat(browser, broker.http_url, "Ada")

    assert broker.child.stop() == 0
    expect(page.locator("#status")).to_have_attribute("data-state", "waiting")
    expect(page.locator("#messages .event.trouble")).to_have_text("Connection lost.")
    expect(page.locator("#send")).to_be_disabled()
    page.screenshot(path=str(tmp_path / "chat-offline.png"))

    start_broker(launch, "--static", str(CHAT_STATIC), ws_port=broker.ws_port, tcp_port=broker.tcp_port)
    expect(page.locator("#messages .event", has_text="Reconnected.")).to_have_count(1, timeout=20_000)
    expect(page.locator("#status")).to_have_attribute("data-state", "open")
    expect(page.locator("#member-list .member-name")).to_have_text(["Ada"])
    page.fill("#text", "back again")
    page.press("#text", "Enter")
    expect(page.locator("#messages .message .text").last).to_have_text("back again")


def test_two_backends_share_the_member_list_and_the_first_member_kicks(
        browser: Browser, launch: Launch, tmp_path: Path) -> None:
    """Members come from the broker (room_members), so each page lists everyone whichever backend serves it.

    Only the room's first member may /kick; the kicked page says why and stays closed (code 4000).
    /join puts a member in a second room, whose messages then reach it too.
    """
    broker = start_broker(launch, "--static", str(CHAT_STATIC))
    for name in ("backend-1", "backend-2"):
        backend = launch(["-m", "examples.chat", "--no-broker", "--tcp-port", str(broker.tcp_port)], name=name)
        backend.wait_for_output("Chat backend running")
    names = ["Ada", "Barbara", "Grace", "Linus"]
    pages = {}
    for name in names:
        pages[name] = open_chat(browser, f"{broker.http_url}#garden", name)
    for page in pages.values():
        expect(page.locator("#member-list .member-name")).to_have_text(names)
        expect(page.locator("#member-count")).to_have_text("4")

    grace, ada, linus = pages["Grace"], pages["Ada"], pages["Linus"]
    grace.fill("#text", "/kick Ada")
    grace.press("#text", "Enter")
    expect(grace.locator("#messages .event.notice").last).to_have_text(
        "Only the room's first member (Ada) may kick.")

    ada.fill("#text", "/kick Linus")
    ada.press("#text", "Enter")
    expect(linus.locator("#messages .event.kicked")).to_have_text(
        "You were removed from the room: Kicked from #garden by Ada")
    expect(linus.locator("#status")).to_have_attribute("data-state", "idle")
    expect(linus.locator("#status-text")).to_have_text("Kicked")
    for name in ("Ada", "Barbara", "Grace"):
        expect(pages[name].locator("#member-list .member-name")).to_have_text(["Ada", "Barbara", "Grace"])
    expect(grace.locator("#messages .event", has_text="Linus was kicked by Ada.")).to_have_count(1)
    linus.wait_for_timeout(1500)  # longer than the page's reconnect delay: it must stay closed
    expect(linus.locator("#status")).to_have_attribute("data-state", "idle")
    linus.screenshot(path=str(tmp_path / "chat-kicked.png"))

    kitchen = open_chat(browser, f"{broker.http_url}#kitchen", "Margaret")
    grace.fill("#text", "/join kitchen")
    grace.press("#text", "Enter")
    expect(grace.locator("#messages .event.notice").last).to_have_text(
        "You joined #kitchen too: its messages appear here.")
    expect(kitchen.locator("#member-list .member-name")).to_have_text(["Grace", "Margaret"])
    kitchen.fill("#text", "soup is ready")
    kitchen.press("#text", "Enter")
    heard = grace.locator("#messages .message").last
    expect(heard.locator(".text")).to_have_text("soup is ready")
    expect(heard.locator(".room-tag")).to_have_text("#kitchen")
    expect(grace.locator("#member-list .member-name")).to_have_text(["Ada", "Barbara", "Grace"])
