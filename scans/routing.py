from __future__ import annotations

from django.urls import path

from scans import consumers

websocket_urlpatterns = [
    path("ws/scans/<uuid:scan_id>/", consumers.ScanConsumer.as_asgi()),
]
