"""What the dashboard's front page says above everything while it holds: agents refused
lately for a wrong token (``dp1: an agent tried to enroll with a wrong token at 06:07``),
which would otherwise scroll away with the events while the agent keeps trying."""

from __future__ import annotations

import html


def notices_block(lines: list[str]) -> str:
    """A section of one line each ("" when there is none)."""
    if not lines:
        return ""
    items = "".join(f"<li>{html.escape(line)}</li>" for line in lines)
    return f'<section class="notices" aria-label="notices"><ul>{items}</ul></section>'
