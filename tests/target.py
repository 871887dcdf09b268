"""A local aiohttp site with pages of known size and delay, and some hostile ones.

Runs in a thread of its own, so synchronous tests, async tests and a daphne
subprocess can all fetch from it. ``python -m tests.target`` serves it for a
person trying the app: ``make run`` with SCANS_ALLOWED_NETWORKS=127.0.0.1/32.
"""

from __future__ import annotations

import asyncio
import gzip
import threading
import zlib

from aiohttp import web


def body_of(size: int) -> bytes:
    pattern = b"scraperproj-target-page "
    return (pattern * (size // len(pattern) + 1))[:size]


async def _delay(request: web.Request) -> None:
    delay_ms = int(request.query.get("delay_ms", "0"))
    if delay_ms:
        await asyncio.sleep(delay_ms / 1000)


async def size_page(request: web.Request) -> web.Response:
    await _delay(request)
    return web.Response(body=body_of(int(request.match_info["size"])), content_type="text/plain")


async def status_page(request: web.Request) -> web.Response:
    await _delay(request)
    code = int(request.match_info["code"])
    return web.Response(status=code, body=body_of(int(request.query.get("size", "10"))))


async def gzip_page(request: web.Request) -> web.Response:
    body = gzip.compress(body_of(int(request.match_info["size"])))
    return web.Response(body=body, headers={"Content-Encoding": "gzip"}, content_type="text/html")


async def redirect_page(request: web.Request) -> web.Response:
    hops = int(request.match_info["hops"])
    target = f"/redirect/{hops - 1}" if hops > 1 else "/size/1000"
    raise web.HTTPFound(target)


async def loop_page(request: web.Request) -> web.Response:
    raise web.HTTPFound("/loop")


async def redirect_to(request: web.Request) -> web.Response:
    raise web.HTTPFound(request.query["url"])


async def never_answers(request: web.Request) -> web.Response:
    await asyncio.sleep(3600)
    return web.Response()


async def trickle(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse()
    await response.prepare(request)
    while True:
        await response.write(b"x")
        await asyncio.sleep(float(request.query.get("every_s", "1")))


async def endless(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse()
    response.enable_chunked_encoding()
    await response.prepare(request)
    chunk = body_of(64 * 1024)
    while True:
        await response.write(chunk)


async def gzip_bomb(request: web.Request) -> web.StreamResponse:
    # About 1 GiB of zeros, sent as a few MB of gzip, never built whole here.
    response = web.StreamResponse(headers={"Content-Encoding": "gzip"})
    await response.prepare(request)
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    zeros = bytes(1024 * 1024)
    for _ in range(1024):
        await response.write(compressor.compress(zeros))
    await response.write(compressor.flush())
    return response


async def reset(request: web.Request) -> web.Response:
    request.transport.abort()
    await asyncio.sleep(1)
    return web.Response()


async def html_page(request: web.Request) -> web.Response:
    body = '<title>x</title><script>document.title="owned"</script>'
    return web.Response(text=body, content_type="text/html")


def make_app() -> web.Application:
    app = web.Application()
    app.router.add_get("/size/{size:\\d+}", size_page)
    app.router.add_get("/status/{code:\\d+}", status_page)
    app.router.add_get("/gzip/{size:\\d+}", gzip_page)
    app.router.add_get("/redirect/{hops:\\d+}", redirect_page)
    app.router.add_get("/loop", loop_page)
    app.router.add_get("/redirect-to", redirect_to)
    app.router.add_get("/never", never_answers)
    app.router.add_get("/trickle", trickle)
    app.router.add_get("/endless", endless)
    app.router.add_get("/gzip-bomb", gzip_bomb)
    app.router.add_get("/reset", reset)
    app.router.add_get("/html", html_page)
    return app


class TargetServer:
    """Serves ``make_app()`` on ``host`` from a background thread."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        self.host, self.port = host, port
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def url(self, path: str) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}{path}"

    def start(self) -> TargetServer:
        self._thread.start()
        self._ready.wait(10)
        return self

    def stop(self) -> None:
        cleanup = asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop)
        cleanup.result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._start_site())
        self._ready.set()
        self._loop.run_forever()

    async def _start_site(self) -> None:
        self._runner = runner = web.AppRunner(
            make_app(), access_log=None, handler_cancellation=True, shutdown_timeout=0.1
        )
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port, backlog=4096)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]


if __name__ == "__main__":
    server = TargetServer(port=8001).start()
    print(f"Target pages on {server.url('/size/1000')} and friends. Ctrl-C stops.")
    threading.Event().wait()
