"""The score of the last `make mutation` run, per module, read from mutmut's ``mutants/``.

A mutant counts as killed when a test failed on it, or when it made the tests run past
their time (mutmut's own count does the same). One that no test runs counts as a survivor.
Exits non-zero below :data:`REQUIRED` percent killed overall, or when the run did not come
to every mutant; lists every survivor.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

REQUIRED = 90.0
KILLED = {1, 3, 24, -24, 152, 255, 36}  # a test failed, or the run timed out (SIGXCPU)
WORDS = {0: "survived", 33: "no test", 5: "no test"}


def line(name: str, killed: int, checked: int, total: int) -> str:
    share = f"{100 * killed / checked:5.1f}%" if checked else "    -"
    rest = f"  ({total - checked} not run)" if total > checked else ""
    return f"{name:32s} {killed:5d} / {checked:<5d} killed  {share}{rest}"


def main(root: Path = Path("mutants")) -> int:
    metas = sorted(root.glob("packdist/**/*.py.meta"))
    if not metas:
        print(f"no mutation results under {root}/: run `make mutation` first", file=sys.stderr)
        return 2
    killed: dict[str, int] = defaultdict(int)
    checked: dict[str, int] = defaultdict(int)
    total: dict[str, int] = defaultdict(int)
    survivors: list[str] = []
    for meta in metas:
        module = str(meta.relative_to(root)).removesuffix(".meta")
        for name, code in sorted(json.loads(meta.read_text())["exit_code_by_key"].items()):
            total[module] += 1
            if code is None:  # the run stopped before it came to this one
                continue
            checked[module] += 1
            if code in KILLED:
                killed[module] += 1
            else:
                survivors.append(f"{name}  ({WORDS.get(code, f'exit {code}')})")
    for module in sorted(total):
        print(line(module, killed[module], checked[module], total[module]))
    k, c, t = sum(killed.values()), sum(checked.values()), sum(total.values())
    print(line("all", k, c, t))
    if survivors:
        print("\nsurvivors (`.venv/bin/mutmut show NAME` shows one):")
        for s in survivors:
            print(f"  {s}")
    return 0 if c == t and 100 * k >= REQUIRED * c else 1


if __name__ == "__main__":
    sys.exit(main())
