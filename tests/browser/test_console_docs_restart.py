"""The OpenAPI browser on /docs from self-hosted files (no request leaves the origin), and a
board that survives the API restarting: it reconnects by itself and shows the alarms raised
while the API was away."""

from __future__ import annotations

import socket
import threading
import time

import pytest
import uvicorn
from console_pages import sign_in
from support import wait_until

from dashboard_api.main import create_app

pytestmark = pytest.mark.services


async def test_docs_are_served_from_the_origin(api, users, new_page, shot) -> None:
    page = await new_page()
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    await page.goto(api.base_url + "/docs")
    await page.wait_for_selector("#login:not([hidden])")  # signed out: sign in first
    await sign_in(page, api.base_url, users["viewer"])
    await page.goto(api.base_url + "/docs")
    await page.wait_for_selector("text=gas-safety operator API")
    await page.wait_for_selector("text=/board")
    foreign = [u for u in requests if not u.startswith(api.base_url) and not u.startswith("data:")]
    assert foreign == []
    await shot(page, "docs")


class _Api(threading.Thread):
    """The API on a fixed port, so that it can be stopped and started again there."""

    def __init__(self, settings, port: int) -> None:
        super().__init__(daemon=True)
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        app = create_app(settings, sse_keepalive_s=0.5, rollups_every_s=None)
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning",
                                                    timeout_graceful_shutdown=1))

    def run(self) -> None:
        self.server.run(sockets=[self.sock])

    def up(self) -> _Api:
        self.start()
        wait_until(lambda: self.server.started, 30, interval_s=0.02, what="the API to start")
        return self

    def down(self) -> None:
        self.server.should_exit = True
        self.join(10)


async def test_board_survives_an_api_restart(api_settings, users, city, raise_alarm, new_page,
                                             shot) -> None:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    base = f"http://127.0.0.1:{port}"
    server = _Api(api_settings, port).up()
    try:
        page = await new_page()
        await sign_in(page, base, users["operator"])
        await page.evaluate("window.__sameDocument = true")
        before, _ = await raise_alarm(city[0])
        await page.wait_for_selector(f'tr[data-alarm="{before}"]')

        server.down()
        await page.wait_for_selector("body[data-live=off]")
        during, _ = await raise_alarm(city[1])  # its live event reaches no one
        server = _Api(api_settings, port).up()
        t0 = time.monotonic()
        await page.wait_for_selector(f'tr[data-alarm="{during}"]', timeout=15_000)
        print(f"board caught up {time.monotonic() - t0:.1f} s after the API came back")
        await page.wait_for_selector("body[data-live=on]")
        after, _ = await raise_alarm(city[2])
        await page.wait_for_selector(f'tr[data-alarm="{after}"]')
        assert await page.evaluate("window.__sameDocument === true")  # never reloaded
        await shot(page, "board-after-restart")
    finally:
        server.down()
