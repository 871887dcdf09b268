"""The account page: API tokens, created (shown once) and revoked by their user."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from scans.models import ApiToken

# Where a new token's key waits, in the session, for the page that shows it once.
NEW_KEY = "new_token_key"


@login_required
def account(request: HttpRequest) -> HttpResponse:
    """Creates a token on POST, then redirects, so that reloading the page that shows its
    key does not create another."""
    if request.method == "POST":
        name = request.POST.get("name", "").strip()[:100] or "API token"
        _, request.session[NEW_KEY] = ApiToken.issue(request.user, name)
        return redirect("scans:account")
    new_key = request.session.pop(NEW_KEY, None)
    tokens = request.user.api_tokens.all()
    return render(request, "scans/account.html", {"tokens": tokens, "new_key": new_key})


@login_required
@require_POST
def revoke_token(request: HttpRequest, token_id: int) -> HttpResponse:
    get_object_or_404(ApiToken, pk=token_id, user=request.user).delete()
    return redirect("scans:account")
