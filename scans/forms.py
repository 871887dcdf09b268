"""The scan form: a list of URLs, one per line, and how to fetch them."""

from __future__ import annotations

import re

from django import forms
from django.conf import settings

from scans.fetch import why_url_refused

EMPTY_LIST = "Enter at least one URL, one per line."
# Bad lines explained one by one; the rest are named by number.
SHOWN_LINES = 20


def _line_numbers(numbers: list[int]) -> str:
    """``lines 2, 3 and 5``; past eleven, ``lines 2, 3, …, 11 and 20 more`` ("and 1 more"
    would take as long as the number)."""
    if len(numbers) == 1:
        return f"line {numbers[0]}"
    if len(numbers) > 11:
        named, last = numbers[:10], f"{len(numbers) - 10} more"
    else:
        *named, last = numbers
    return f"lines {', '.join(map(str, named))} and {last}"


# Marks people put around a URL in mail and in Markdown, dropped from a line.
_WRAPPERS = ("<>", '""', "''")
# A second URL on the line, after a space, a tab, a comma or a semicolon (one in a query,
# after "=", is part of the first).
_SECOND_URL = re.compile(r"[\s,;]https?://", re.I)
_SPACE = re.compile(r"\s")


def _unwrapped(line: str) -> str:
    """The line, stripped, without the quotes or angle brackets around it."""
    line = line.strip()
    if len(line) > 2 and line[0] + line[-1] in _WRAPPERS:
        return line[1:-1].strip()
    return line


def _not_one_url(url: str) -> str | None:
    """Why ``url`` is not one URL: two pasted on one line (they would be fetched as one
    URL, spaces and all)."""
    if _SECOND_URL.search(url):
        return "it holds more than one URL: put each on a line of its own"
    return None


def _spaced(url: str) -> str | None:
    if _SPACE.search(url):
        return "it has a space in it: write a space in a URL as %20"
    return None


def _not_text(url: str) -> str | None:
    """Why ``url`` cannot be stored as text: JSON may carry half a surrogate pair ("\\ud800"),
    which no database stores as UTF-8 (and yarl drops without a word)."""
    try:
        url.encode("utf-8")
    except UnicodeEncodeError as e:
        return f"character {e.start + 1} is not a valid Unicode character"
    return None


def parse_urls(text: str) -> list[str]:
    """Non-blank lines, stripped (and unwrapped: ``<URL>``, ``"URL"``); raises
    ValidationError naming every bad line."""
    lines = enumerate(text.splitlines(), 1)
    numbered = [(n, _unwrapped(line)) for n, line in lines if line.strip()]
    if not numbered:
        raise forms.ValidationError(EMPTY_LIST)
    if len(numbered) > settings.SCANS_MAX_URLS:
        raise forms.ValidationError(
            f"{len(numbered)} URLs is more than the {settings.SCANS_MAX_URLS} a scan may hold."
        )
    ports = settings.SCANS_ALLOWED_PORTS  # read once: each read of a setting costs a lookup
    refused = [
        (n, url, _not_text(url) or _not_one_url(url) or why_url_refused(url, ports) or _spaced(url))
        for n, url in numbered
    ]
    refused = [(n, url, reason) for n, url, reason in refused if reason]
    if refused:
        shown, rest = refused[:SHOWN_LINES], refused[SHOWN_LINES:]
        lines = [f"Line {n}: {url[:200]!r}: {reason}." for n, url, reason in shown]
        if rest:
            lines.append(f"And {len(rest)} more: {_line_numbers([n for n, _, _ in rest])}.")
        if len(refused) > 10:
            lines.insert(0, f"Fix these {len(refused)} lines of the list:")
        elif len(refused) > 1:
            lines.insert(0, f"Fix {_line_numbers([n for n, _, _ in refused])} of the list:")
        raise forms.ValidationError(lines)
    return [url for _, url in numbered]


class ScanForm(forms.Form):
    urls = forms.CharField(
        label="URLs, one per line",
        error_messages={"required": EMPTY_LIST},
        widget=forms.Textarea(attrs={"rows": 10, "spellcheck": "false", "autofocus": True}),
        strip=False,
    )

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # Built here, not at import, so the limits follow the settings.
        self.fields["concurrency"] = forms.IntegerField(
            min_value=1,
            max_value=settings.SCANS_MAX_CONCURRENCY,
            initial=settings.SCANS_DEFAULT_CONCURRENCY,
            help_text=(
                "How many URLs are fetched at once; at most "
                f"{settings.SCANS_PER_HOST_LIMIT} at a time from any one site."
            ),
        )
        self.fields["timeout"] = forms.FloatField(
            min_value=0.1,
            max_value=settings.SCANS_MAX_TIMEOUT,
            initial=settings.SCANS_TIMEOUT,
            help_text="Seconds each URL may take, from connect to last byte.",
        )

    def clean_urls(self) -> list[str]:
        return parse_urls(self.cleaned_data["urls"])
