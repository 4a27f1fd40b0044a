"""The score of the last `make mutation` run, per module, read from mutmut's ``mutants/``.

A mutant counts as killed when a test failed on it, or when it made the tests run past
their time (mutmut's own count does the same). One that no test runs counts as a survivor.
Exits non-zero below :data:`REQUIRED` percent killed overall, listing every survivor.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

REQUIRED = 90.0
KILLED = {1, 3, 24, -24, 152, 255, 36}  # a test failed, or the run timed out (SIGXCPU)
WORDS = {0: "survived", 33: "no test", 5: "no test", None: "not run"}


def main(root: Path = Path("mutants")) -> int:
    metas = sorted(root.glob("packdist/**/*.py.meta"))
    if not metas:
        print(f"no mutation results under {root}/: run `make mutation` first", file=sys.stderr)
        return 2
    killed: dict[str, int] = defaultdict(int)
    total: dict[str, int] = defaultdict(int)
    survivors: list[str] = []
    for meta in metas:
        module = str(meta.relative_to(root)).removesuffix(".meta")
        for name, code in sorted(json.loads(meta.read_text())["exit_code_by_key"].items()):
            total[module] += 1
            if code in KILLED:
                killed[module] += 1
            else:
                survivors.append(f"{name}  ({WORDS.get(code, f'exit {code}')})")
    for module in sorted(total):
        share = 100 * killed[module] / total[module]
        print(f"{module:32s} {killed[module]:5d} / {total[module]:<5d} killed  {share:5.1f}%")
    score = 100 * sum(killed.values()) / sum(total.values())
    print(
        f"{'all':32s} {sum(killed.values()):5d} / {sum(total.values()):<5d} killed  {score:5.1f}%"
    )
    if survivors:
        print("\nsurvivors (`.venv/bin/mutmut show NAME` shows one):")
        for s in survivors:
            print(f"  {s}")
    return 0 if score >= REQUIRED else 1


if __name__ == "__main__":
    sys.exit(main())
