"""A scan as a download: CSV or JSON, a header and one row per URL in submission order.

The columns are the snapshot's (``RESULT_FIELDS``), so a download says what the live
page and the API say, in the same words and units.
"""

from __future__ import annotations

import csv
import io

from scans.models import Scan
from scans.snapshots import RESULT_FIELDS, result_dict, scan_dict

COLUMNS = RESULT_FIELDS
# A spreadsheet runs a cell that starts with one of these as a formula; a fetched
# site chooses some of our text (its content type), so no cell may start with one.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def results(scan: Scan) -> list[dict]:
    rows = scan.results.order_by("position").values(*RESULT_FIELDS)
    return [result_dict(values) for values in rows]


def _cell(value: object) -> object:
    if value is None:
        return ""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def as_csv(scan: Scan) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(COLUMNS)
    for row in results(scan):
        writer.writerow([_cell(row[name]) for name in COLUMNS])
    return out.getvalue()


def many_as_csv(scans: list[Scan]) -> str:
    """Several scans in one file: each row starts with its scan's id."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(("scan", *COLUMNS))
    for scan in scans:
        for row in results(scan):
            writer.writerow([scan.id, *(_cell(row[name]) for name in COLUMNS)])
    return out.getvalue()


def as_json(scan: Scan) -> dict:
    return {"scan": scan_dict(scan), "columns": list(COLUMNS), "results": results(scan)}


def filename(scan: Scan, extension: str) -> str:
    return f"scan-{scan.created:%Y%m%d-%H%M%S}-{str(scan.id)[:8]}.{extension}"
