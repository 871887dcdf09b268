"""A visitor of the running app: a real HTTP client and a real WebSocket, as a browser uses them."""

from __future__ import annotations

import json
import re

import aiohttp
from yarl import URL


class Visitor:
    def __init__(self, base_url: str):
        self.base_url = base_url
        self.session = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))

    async def close(self) -> None:
        await self.session.close()

    async def __aenter__(self) -> Visitor:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def submit(self, urls: list[str], concurrency: int = 10, timeout: float = 10) -> str:
        """Posts the form as a browser does; returns the new scan's id."""
        async with self.session.get(self.base_url + "/") as response:
            page = await response.text()
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)
        form = {
            "csrfmiddlewaretoken": token,
            "urls": "\n".join(urls),
            "concurrency": str(concurrency),
            "timeout": str(timeout),
        }
        # Multipart, as the form's enctype asks.
        body = aiohttp.FormData(form, default_to_multipart=True)
        async with self.session.post(
            self.base_url + "/", data=body, allow_redirects=False
        ) as response:
            assert response.status == 302, await response.text()
            location = response.headers["Location"]
        return re.fullmatch(r"/scans/([0-9a-f-]{36})/", location).group(1)

    async def snapshot(self, scan_id: str) -> dict:
        async with self.session.get(f"{self.base_url}/api/scans/{scan_id}/") as response:
            assert response.status == 200
            return await response.json()

    def socket(self, scan_id: str, origin: str | None = None):
        url = URL(self.base_url).with_scheme("ws") / "ws" / "scans" / scan_id / ""
        headers = {"Origin": origin or self.base_url}
        return self.session.ws_connect(url, headers=headers, max_msg_size=0)


async def watch(ws, total: int, timeout_s: float = 60) -> tuple[list[dict], dict[int, dict]]:
    """Reads messages until every result has arrived; returns (messages, results by position)."""
    messages: list[dict] = []
    seen: dict[int, dict] = {}
    newest: dict = {"seq": -1}
    while True:
        raw = await ws.receive_str(timeout=timeout_s)
        message = json.loads(raw)
        messages.append(message)
        for result in message["results"]:
            if result["state"] != "pending":
                seen[result["position"]] = result
        # The scan's state is the newest message's: another worker's older one may come after.
        if message["seq"] >= newest["seq"]:
            newest = message
        if len(seen) == total and newest["scan"]["status"] in ("done", "cancelled"):
            return messages, seen
