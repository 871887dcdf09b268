"""A local aiohttp site with pages of known size and delay, and some hostile ones.

Runs in a thread of its own, so synchronous tests, async tests and a daphne
subprocess can all fetch from it. The same pages are also served over HTTPS
with a self-signed certificate made at start, which no client trusts: that is
the bad-TLS target. ``python -m tests.target`` serves it for a person trying
the app: ``make run`` with SCANS_ALLOWED_NETWORKS=127.0.0.1/32.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import gzip
import ipaddress
import ssl
import tempfile
import threading
import zlib
from pathlib import Path

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


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


async def deflate_page(request: web.Request) -> web.Response:
    # raw=1: the headerless deflate some servers send under "deflate".
    wbits = -zlib.MAX_WBITS if request.query.get("raw") else zlib.MAX_WBITS
    compressor = zlib.compressobj(6, zlib.DEFLATED, wbits)
    body = compressor.compress(body_of(int(request.match_info["size"]))) + compressor.flush()
    return web.Response(
        body=body, headers={"Content-Encoding": "deflate"}, content_type="text/html"
    )


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
    with contextlib.suppress(ConnectionResetError):
        while True:
            await response.write(b"x")
            await asyncio.sleep(float(request.query.get("every_s", "1")))
    return response


async def endless(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse()
    response.enable_chunked_encoding()
    await response.prepare(request)
    chunk = body_of(64 * 1024)
    # Until the client hangs up, which every client should.
    with contextlib.suppress(ConnectionResetError):
        while True:
            await response.write(chunk)
    return response


async def gzip_bomb(request: web.Request) -> web.StreamResponse:
    # About 1 GiB of zeros, sent as about 1 MB of gzip, never built whole here.
    response = web.StreamResponse(headers={"Content-Encoding": "gzip"})
    await response.prepare(request)
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    zeros = bytes(1024 * 1024)
    with contextlib.suppress(ConnectionResetError):
        for _ in range(1024):
            await response.write(compressor.compress(zeros))
        await response.write(compressor.flush())
    return response


async def reset(request: web.Request) -> web.Response:
    request.transport.abort()
    await asyncio.sleep(1)
    return web.Response()


async def bad_status_line(request: web.Request) -> web.Response:
    # Not HTTP at all: the client's parser error quotes what it got.
    request.transport.write(b'HTTP/1.1 2x0 <script>alert("status")</script>\r\n\r\n')
    request.transport.close()
    await asyncio.sleep(1)
    return web.Response()


async def endless_headers(request: web.Request) -> web.Response:
    # Header lines without end, written under aiohttp's own response.
    request.transport.write(b"HTTP/1.1 200 OK\r\n")
    line = b"X-Padding: " + b"a" * 100 + b"\r\n"
    with contextlib.suppress(ConnectionResetError, AttributeError):
        while True:
            request.transport.write(line * 100)
            await asyncio.sleep(0.001)
    return web.Response()


async def content_type_page(request: web.Request) -> web.Response:
    return web.Response(body=b"ok", headers={"Content-Type": request.query["value"]})


async def html_page(request: web.Request) -> web.Response:
    body = '<title>x</title><script>document.title="owned"</script>'
    return web.Response(text=body, content_type="text/html")


def make_app() -> web.Application:
    app = web.Application()
    app.router.add_get("/size/{size:\\d+}", size_page)
    app.router.add_get("/status/{code:\\d+}", status_page)
    app.router.add_get("/gzip/{size:\\d+}", gzip_page)
    app.router.add_get("/deflate/{size:\\d+}", deflate_page)
    app.router.add_get("/redirect/{hops:\\d+}", redirect_page)
    app.router.add_get("/loop", loop_page)
    app.router.add_get("/redirect-to", redirect_to)
    app.router.add_get("/never", never_answers)
    app.router.add_get("/trickle", trickle)
    app.router.add_get("/endless", endless)
    app.router.add_get("/gzip-bomb", gzip_bomb)
    app.router.add_get("/reset", reset)
    app.router.add_get("/bad-status-line", bad_status_line)
    app.router.add_get("/endless-headers", endless_headers)
    app.router.add_get("/content-type", content_type_page)
    app.router.add_get("/html", html_page)
    return app


def self_signed_context(host: str) -> ssl.SSLContext:
    """A server context with a fresh certificate for ``host`` that no one trusts."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "scraperproj test target")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(host))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    # load_cert_chain reads files only.
    with tempfile.TemporaryDirectory() as folder:
        cert_path, key_path = Path(folder, "cert.pem"), Path(folder, "key.pem")
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        context.load_cert_chain(cert_path, key_path)
    return context


class TargetServer:
    """Serves ``make_app()`` on ``host`` from a background thread."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        self.host, self.port = host, port
        self.tls_port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def url(self, path: str) -> str:
        return f"http://{self._netloc(self.port)}{path}"

    def tls_url(self, path: str) -> str:
        """The same page over HTTPS with an untrusted certificate."""
        return f"https://{self._netloc(self.tls_port)}{path}"

    def _netloc(self, port: int) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{port}"

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
        tls_site = web.TCPSite(
            runner, self.host, 0, ssl_context=self_signed_context(self.host), backlog=128
        )
        await tls_site.start()
        self.tls_port = tls_site._server.sockets[0].getsockname()[1]


if __name__ == "__main__":
    server = TargetServer(port=8001).start()
    print(f"Target pages on {server.url('/size/1000')} and friends. Ctrl-C stops.")
    threading.Event().wait()
