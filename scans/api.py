"""The JSON API: create, list, read and cancel scans, as the session's visitor or by API token.

``Authorization: Token <key>`` authenticates as the token's user and needs no
CSRF token; a browser session's unsafe requests must carry ``X-CSRFToken``.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from datetime import timedelta

from django.conf import settings
from django.core.paginator import Paginator
from django.http import Http404, HttpRequest, JsonResponse
from django.middleware.csrf import CsrfViewMiddleware
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt

from scans.access import get_scan_for_visitor, too_many_active, visitor_scans
from scans.forms import ScanForm
from scans.models import ApiToken
from scans.snapshots import scan_dict, snapshot
from scans.submit import cancel, create_scan

PAGE_SIZE = 50


def error(status: int, message: str, **extra: object) -> JsonResponse:
    return JsonResponse({"error": message, **extra}, status=status)


def _token_user(request: HttpRequest):
    """The token's user; None without a token header; raises PermissionError for a bad one."""
    header = request.headers.get("Authorization", "")
    if not header:
        return None
    kind, _, key = header.partition(" ")
    token = None
    if kind.lower() in ("token", "bearer") and key.strip():
        digest = ApiToken.digest_of(key.strip())
        token = ApiToken.objects.select_related("user").filter(digest=digest).first()
    if token is None or not token.user.is_active:
        raise PermissionError
    if token.last_used is None or timezone.now() - token.last_used > timedelta(minutes=1):
        ApiToken.objects.filter(pk=token.pk).update(last_used=timezone.now())
    return token.user


def _csrf_refusal(request: HttpRequest) -> JsonResponse | None:
    if request.method in ("GET", "HEAD", "OPTIONS"):
        return None
    if CsrfViewMiddleware(lambda r: None).process_view(request, None, (), {}) is None:
        return None
    return error(403, "CSRF check failed: send the csrftoken cookie in X-CSRFToken, or use a token")


def api_view(*methods: str) -> Callable:
    def decorate(view: Callable) -> Callable:
        @csrf_exempt
        @functools.wraps(view)
        def wrapper(request: HttpRequest, *args, **kwargs) -> JsonResponse:
            if request.method not in methods:
                return error(405, f"{request.method} is not allowed here", allowed=list(methods))
            try:
                user = _token_user(request)
            except PermissionError:
                return error(401, "the API token is not valid (it may have been revoked)")
            if user is not None:
                request.user = user
            elif refusal := _csrf_refusal(request):
                return refusal
            try:
                return view(request, *args, **kwargs)
            except Http404:
                return error(404, "no such scan")

        return wrapper

    return decorate


def _scan_input(request: HttpRequest) -> dict:
    """The JSON body as the form's fields; raises ValueError with what is wrong."""
    try:
        body = json.loads(request.body or b"")
    except ValueError as e:
        raise ValueError("the body is not valid JSON") from e
    if not isinstance(body, dict):
        raise ValueError('the body must be a JSON object: {"urls": [...]}')
    urls = body.get("urls")
    if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
        raise ValueError('"urls" must be a list of strings')
    return {
        "urls": "\n".join(u.replace("\n", " ") for u in urls),
        "concurrency": body.get("concurrency", settings.SCANS_DEFAULT_CONCURRENCY),
        "timeout": body.get("timeout", settings.SCANS_TIMEOUT),
    }


@api_view("GET", "POST")
def scans(request: HttpRequest) -> JsonResponse:
    if request.method == "GET":
        return list_scans(request)
    if settings.SCANS_REQUIRE_LOGIN and not request.user.is_authenticated:
        return error(401, "log in or send an API token to start scans")
    try:
        form = ScanForm(_scan_input(request))
    except ValueError as e:
        return error(400, str(e))
    if not form.is_valid():
        fields = {
            name: [e["message"] for e in errs] for name, errs in form.errors.get_json_data().items()
        }
        return error(400, "the scan was not created", fields=fields)
    if busy := too_many_active(request):
        return error(429, busy)
    data = form.cleaned_data
    scan = create_scan(request, data["urls"], data["concurrency"], data["timeout"])
    response = JsonResponse(_public(snapshot(scan.id)), status=201)
    response["Location"] = f"/api/scans/{scan.id}/"
    return response


def list_scans(request: HttpRequest) -> JsonResponse:
    page = Paginator(visitor_scans(request), PAGE_SIZE).get_page(request.GET.get("page"))
    return JsonResponse(
        {
            "scans": [scan_dict(scan) for scan in page],
            "page": page.number,
            "pages": page.paginator.num_pages,
        }
    )


def _public(data: dict) -> dict:
    return {"scan": data["scan"], "results": data["results"]}


@api_view("GET")
def scan_detail(request: HttpRequest, scan_id) -> JsonResponse:
    scan = get_scan_for_visitor(request, scan_id)
    return JsonResponse(_public(snapshot(scan.id)))


@api_view("POST")
def scan_cancel(request: HttpRequest, scan_id) -> JsonResponse:
    scan = get_scan_for_visitor(request, scan_id)
    if not cancel(scan):
        return error(409, f"the scan has already ended ({scan.status})")
    return JsonResponse(_public(snapshot(scan.id)))
