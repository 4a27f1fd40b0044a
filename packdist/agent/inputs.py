"""What the agent accepts in a request body or query, checked before anything acts on it.

Anything can arrive on an agent's port: a value that is not what the route expects is a
:class:`UserError` (answered 400 with one line naming the problem), never an exception that
escapes as a 500, nor a number such as NaN that makes a wait last forever.
"""

from __future__ import annotations

import json
import math
from typing import Any

from aiohttp import HttpVersion11, web

from packdist.errors import UserError


async def read_json(request: web.Request) -> Any:
    """The request's body as JSON (UTF-8, whatever charset the request claims)."""
    raw = await request.read()
    try:
        return json.loads(raw)
    except RecursionError:
        raise UserError("body is not JSON this agent accepts: nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        raise UserError(f"body is not JSON: {exc}") from None


def seconds(value: object, what: str, most: float) -> float:
    """A duration given as a JSON number: finite, from 0 to ``most`` seconds."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise UserError(f"{what} must be a number of seconds")
    number = float(value)
    if not math.isfinite(number) or not 0 <= number <= most:
        raise UserError(f"{what} must be between 0 and {most:g} seconds, not {number!r}")
    return number


def query_seconds(text: str, what: str) -> float:
    """A duration given as text in a query: a finite number of seconds, 0 or more."""
    try:
        number = float(text)
    except ValueError:
        raise UserError(f"{what} must be a number of seconds, not {text[:40]!r}") from None
    if not math.isfinite(number) or number < 0:
        raise UserError(f"{what} must be a number of seconds from 0, not {text[:40]!r}")
    return number


async def expect_handler(request: web.Request) -> web.StreamResponse | None:
    """``Expect: 100-continue`` is answered; any other value is refused with 417.

    aiohttp's own handler echoes the value into its answer and fails (a 500 with a logged
    traceback) on one it cannot encode, such as a non-UTF-8 byte: anyone could cause that,
    before any credential is looked at.
    """
    if request.version != HttpVersion11:
        return None
    if request.headers.get("Expect", "").lower() != "100-continue":
        return web.json_response({"error": "unknown Expect header"}, status=417)
    await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    return None


async def no_route(request: web.Request) -> web.StreamResponse:
    """The answer for a path no route serves (404), or a route's path with another method
    (405): a catch-all route, so that :func:`expect_handler` covers these too."""
    for resource in request.app.router.resources():
        info = resource.get_info()
        pattern = info.get("pattern")
        if info.get("path") == request.path or (
            pattern is not None and pattern.fullmatch(request.path)
        ):
            methods = sorted({r.method for r in resource} - {"*"})
            if methods:
                return web.json_response(
                    {"error": f"{request.path} answers {', '.join(methods)} only"},
                    status=405,
                    headers={"Allow": ", ".join(methods)},
                )
    return web.json_response({"error": "no such endpoint on this agent"}, status=404)
