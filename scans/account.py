"""The account page: API tokens, created (shown once) and revoked by their user."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from scans.models import ApiToken


@login_required
def account(request: HttpRequest) -> HttpResponse:
    new_key = None
    if request.method == "POST":
        name = request.POST.get("name", "").strip()[:100] or "API token"
        _, new_key = ApiToken.issue(request.user, name)
    tokens = request.user.api_tokens.all()
    return render(request, "scans/account.html", {"tokens": tokens, "new_key": new_key})


@login_required
@require_POST
def revoke_token(request: HttpRequest, token_id: int) -> HttpResponse:
    get_object_or_404(ApiToken, pk=token_id, user=request.user).delete()
    return redirect("scans:account")
