from __future__ import annotations

from django.urls import path

from scans import account, api, views

app_name = "scans"

urlpatterns = [
    path("", views.new_scan, name="new"),
    path("scans/", views.scan_list, name="list"),
    path("scans/<uuid:scan_id>/", views.scan_detail, name="detail"),
    path("scans/<uuid:scan_id>/cancel/", views.cancel_scan, name="cancel"),
    path("scans/<uuid:scan_id>/again/", views.scan_again, name="again"),
    path("scans/<uuid:scan_id>/export.csv", views.export_csv, name="export-csv"),
    path("scans/<uuid:scan_id>/export.json", views.export_json, name="export-json"),
    path("api/scans/", api.scans, name="api-scans"),
    path("api/scans/<uuid:scan_id>/", api.scan_detail, name="snapshot"),
    path("api/scans/<uuid:scan_id>/cancel/", api.scan_cancel, name="api-cancel"),
    path("account/", account.account, name="account"),
    path("account/tokens/<int:token_id>/revoke/", account.revoke_token, name="revoke-token"),
]
