from __future__ import annotations

from django.urls import path

from scans import views

app_name = "scans"

urlpatterns = [
    path("", views.new_scan, name="new"),
    path("scans/", views.scan_list, name="list"),
    path("scans/<uuid:scan_id>/", views.scan_detail, name="detail"),
    path("scans/<uuid:scan_id>/cancel/", views.cancel_scan, name="cancel"),
    path("api/scans/<uuid:scan_id>/", views.scan_snapshot, name="snapshot"),
]
