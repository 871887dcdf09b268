"""The JSON shape of a scan and its results, shared by the API, the socket and the worker."""

from __future__ import annotations

from scans.models import Result, Scan

RESULT_FIELDS = (
    "position",
    "url",
    "state",
    "http_status",
    "size",
    "wire_size",
    "content_type",
    "ttfb_ms",
    "elapsed_ms",
    "start_ms",
    "final_url",
    "redirects",
    "error",
    "error_message",
    "finished_at",
)


def _iso(value) -> str | None:
    return value.isoformat() if value else None


def scan_dict(scan: Scan) -> dict:
    return {
        "id": str(scan.id),
        "status": scan.status,
        "total": scan.total,
        "done": scan.done,
        "concurrency": scan.concurrency,
        "timeout": scan.timeout_s,
        "total_bytes": scan.total_bytes,
        "sum_ms": round(scan.sum_ms, 1),
        "created": _iso(scan.created),
        "started": _iso(scan.started),
        "finished": _iso(scan.finished),
        "wall_ms": scan.wall_ms,
    }


def result_dict(values: dict) -> dict:
    """``values`` holds RESULT_FIELDS, from a queryset's .values() or the worker."""
    row = {name: values.get(name) for name in RESULT_FIELDS}
    row["finished_at"] = _iso(row["finished_at"])
    return row


def snapshot(scan_id) -> dict:
    """Everything a page needs to draw a scan.

    The scan (and its seq) is read before the rows, so the rows are at least
    as new as the seq: a page may see a result twice, never miss one.
    """
    scan = Scan.objects.get(pk=scan_id)
    rows = Result.objects.filter(scan_id=scan_id).order_by("position").values_list(*RESULT_FIELDS)
    return message(scan, [_result_from_row(row) for row in rows])


def _result_from_row(row: tuple) -> dict:
    result = dict(zip(RESULT_FIELDS, row, strict=True))
    result["finished_at"] = _iso(result["finished_at"])
    return result


def message(scan: Scan, results: list[dict]) -> dict:
    """A snapshot (every result) or a progress message (the results that changed)."""
    return {"seq": scan.seq, "scan": scan_dict(scan), "results": results}
