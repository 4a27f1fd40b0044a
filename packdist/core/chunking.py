"""Content-defined chunking (FastCDC 2020) of file streams.

Parameters are recorded in every manifest, so they can change between packages without
breaking old ones. The default average of 128 KiB (pyfastcdc yields an actual mean near
``avg + min`` = 160 KiB) was chosen by measurement, see ``docs/chunking.md``: small enough
that a scattered edit re-sends little, large enough that the library is not millions of tiny
files and import stays near disk speed.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from pyfastcdc import FastCDC

ALGORITHM = "fastcdc2020"
READ_BUFFER = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class ChunkerParams:
    """How files are cut into chunks."""

    avg: int = 128 * 1024
    min: int = 32 * 1024
    max: int = 512 * 1024

    def to_json(self) -> dict[str, Any]:
        return {"algorithm": ALGORITHM, "avg": self.avg, "min": self.min, "max": self.max}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ChunkerParams:
        if data.get("algorithm") != ALGORITHM:
            raise ValueError(f"unknown chunking algorithm {data.get('algorithm')!r}")
        return cls(avg=int(data["avg"]), min=int(data["min"]), max=int(data["max"]))


DEFAULT_PARAMS = ChunkerParams()


class Chunker:
    """Cuts byte streams into content-defined chunks."""

    def __init__(self, params: ChunkerParams = DEFAULT_PARAMS) -> None:
        self.params = params
        self._cdc = FastCDC(params.avg, min_size=params.min, max_size=params.max)

    def cut_stream(self, stream: BinaryIO) -> Iterator[memoryview]:
        """Yield the chunks of ``stream`` in order.

        Each view is valid only until the next one is produced: hash or copy it at once.
        Memory stays bounded by the read buffer whatever the stream's size.
        """
        for chunk in self._cdc.cut_stream(stream):
            yield chunk.data

    def cut_file(self, path: Path) -> Iterator[memoryview]:
        with open(path, "rb", buffering=READ_BUFFER) as f:
            yield from self.cut_stream(f)

    def cut_bytes(self, data: bytes) -> list[bytes]:
        """Cut an in-memory buffer (tests and small inputs)."""
        return [bytes(c.data) for c in self._cdc.cut_buf(data)]
