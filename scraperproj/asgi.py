"""The ASGI application: HTTP, the live page's WebSocket, and the "scan-jobs" channel."""

from __future__ import annotations

import asyncio
import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "scraperproj.settings")
django_asgi_app = get_asgi_application()

# Imported after Django is set up: they import models.
from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.layers import get_channel_layer  # noqa: E402
from channels.routing import ChannelNameRouter, ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402
from django.conf import settings  # noqa: E402

from scans.announcer import PROGRESS_LAYER  # noqa: E402
from scans.consumers import ScanJobConsumer  # noqa: E402
from scans.relay import relay_of_this_loop  # noqa: E402
from scans.routing import websocket_urlpatterns  # noqa: E402
from scans.runner import SCAN_JOBS, get_runner  # noqa: E402
from scans.startup import keep_startup_objects_out_of_collections  # noqa: E402

# Built now, not by the first form's wake-up: importing channels-redis took 38 ms of that POST.
get_channel_layer()
get_channel_layer(PROGRESS_LAYER)

router = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": AllowedHostsOriginValidator(
            AuthMiddlewareStack(URLRouter(websocket_urlpatterns))
        ),
        "channel": ChannelNameRouter({SCAN_JOBS: ScanJobConsumer.as_asgi()}),
    }
)

# Daphne and `runworker` (through ASGI_APPLICATION) both load this module. Not to be imported
# into a test's own process: what the suite had made by then would never be collected.
keep_startup_objects_out_of_collections()


async def application(scope: dict, receive, send) -> None:
    # Daphne has no lifespan events: the first connection starts the in-process worker, and
    # opens the loop's progress relay before the first page's socket needs it.
    if scope["type"] != "channel":
        if settings.SCANS_RUN_IN_WEB:
            get_runner().start_beside(asyncio.get_running_loop())
        relay_of_this_loop().open_soon()
    await router(scope, receive, send)
