"""Writing a chunk stream's body to the agent's connection, without copying the chunks.

aiohttp's ``StreamResponse.write`` joins each piece with its chunked-encoding framing into a
new buffer (on Python 3.11 it never uses ``writelines``), and the site used to join each
group of frames first: two copies of every byte sent, 12% of the site's CPU on a fast link
(``docs/benchmarks.md``). Once aiohttp has sent the response's headers (a StreamResponse
sends them in ``prepare``), :class:`BodyWrites` writes each slice itself as one HTTP chunk
made of its parts, the frames' headers and the chunks' bytes as they were read:

* with chunked encoding (HTTP/1.1) the size line and the closing CRLF around the parts, as
  aiohttp writes them; with none (an HTTP/1.0 client, the body ends when the connection
  closes) the parts bare;
* as ``writelines`` (plain TCP: one ``writev``; TLS: each part encrypted as it is, the
  41-byte frame headers in small records of their own, measured no dearer than joining:
  the site's CPU per GiB over HTTPS 1.40-1.80 s either way),
  except on the Pythons whose asyncio transport never applies back-pressure to
  ``writelines`` (CVE-2024-12254): there, joined once.

Flow control is aiohttp's: after each slice the caller awaits the writer's ``drain``, which
waits while the transport holds more than its high-water mark.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator, Sequence

#: asyncio's transports that ignore back-pressure in ``writelines`` (CVE-2024-12254)
UNSAFE_WRITELINES = (3, 12) <= sys.version_info < (3, 12, 9) or (
    (3, 13) <= sys.version_info < (3, 13, 2)
)

Part = bytes | memoryview


def slices(parts: Sequence[bytes], most: int) -> Iterator[tuple[list[Part], int]]:
    """``parts`` in runs of ``most`` bytes (the last one shorter), each with its length; a
    part split across runs is cut as a view, never copied."""
    run: list[Part] = []
    size = 0
    for part in parts:
        view = memoryview(part)
        while view:
            piece = view[: most - size]
            run.append(piece if len(piece) < len(part) else part)
            size += len(piece)
            view = view[len(piece) :]
            if size == most:
                yield run, size
                run, size = [], 0
    if run:
        yield run, size


class BodyWrites:
    """Writes the body slices of one response straight to its transport."""

    def __init__(self, transport: asyncio.Transport, *, chunked: bool) -> None:
        self.transport = transport
        self.chunked = chunked
        self.join = UNSAFE_WRITELINES

    def write(self, parts: list[Part], size: int) -> None:
        """One slice of ``size`` bytes; ConnectionResetError if the peer has gone (as
        aiohttp's own write says it)."""
        if self.transport.is_closing():
            raise ConnectionResetError("chunk stream closed by the receiver")
        if self.chunked:
            parts = [b"%x\r\n" % size, *parts, b"\r\n"]
        if self.join:
            self.transport.write(b"".join(parts))
        else:
            self.transport.writelines(parts)
