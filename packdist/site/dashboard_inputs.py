"""What the dashboard reads from a request: numbers of its query, a job page's paging, a
login form. Each refuses what is wrong in words (a 400), before anything is looked up."""

from __future__ import annotations

import re
from urllib.parse import parse_qs

from aiohttp import web

from packdist.errors import UserError
from packdist.site import views
from packdist.states import InstructionState

MAX_JOB_PAGE = 5000  # instructions on one page of a job
FORM_TYPE = "application/x-www-form-urlencoded"


def query_count(request: web.Request, name: str, default: int) -> int:
    """A non-negative integer of the query, in ASCII digits and small enough for the
    database (a 20-digit ``after`` once reached SQLite and answered 500)."""
    raw = request.query.get(name)
    if raw is None:
        return default
    if not re.fullmatch(r"[0-9]{1,15}", raw):
        raise UserError(f"{name} must be a whole number of at most 15 digits")
    return int(raw)


def job_paging(request: web.Request) -> tuple[InstructionState | None, int, int]:
    """``?state=S&offset=N&limit=N`` of a job's page: which of its instructions to show."""
    raw = request.query.get("state") or None
    if raw is not None and raw not in {s.value for s in InstructionState}:
        raise UserError(f"state must be one of {', '.join(s.value for s in InstructionState)}")
    offset = query_count(request, "offset", 0)
    limit = min(max(query_count(request, "limit", views.JOB_PAGE), 1), MAX_JOB_PAGE)
    return (InstructionState(raw) if raw else None), offset, limit


async def login_fields(request: web.Request) -> tuple[str, str]:
    """``(password, next)`` of a login form, or UserError (a 400) saying what is wrong with
    it. Checked before reading: the type (what a browser sends, UTF-8); the size is bounded
    by the route's limit (LOGIN_BODY)."""
    if request.content_type != FORM_TYPE:
        raise UserError(f"a login is a form: Content-Type {FORM_TYPE}")
    if request.charset and request.charset.lower() not in ("utf-8", "utf8", "us-ascii"):
        raise UserError("a login form must be UTF-8")
    try:
        text = (await request.read()).decode("utf-8")
        fields = parse_qs(text, keep_blank_values=True, max_num_fields=8, errors="strict")
    except ValueError as exc:  # undecodable bytes or escapes, too many fields
        raise UserError("the login form is not a UTF-8 form") from exc
    password = fields.get("password", [""])[0]
    return password, fields.get("next", ["/"])[0]
