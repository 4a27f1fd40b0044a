"""``python -m bench [COMMAND] [OPTIONS]``: run one benchmark by name, or all of them.

Sub-commands are discovered, not listed here: a module ``bench/foo_bar_bench.py`` with a
``main(argv) -> int`` and a one-line ``DESCRIPTION`` is the sub-command ``foo-bar``.
Without a command, every benchmark runs in turn with its defaults.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from collections.abc import Callable
from types import ModuleType

import bench

SUFFIX = "_bench"


def commands() -> dict[str, str]:
    """Map each sub-command name to the module that implements it."""
    found: dict[str, str] = {}
    for info in pkgutil.iter_modules(bench.__path__):
        if info.name.endswith(SUFFIX) and not info.name.startswith("_"):
            found[info.name[: -len(SUFFIX)].replace("_", "-")] = f"bench.{info.name}"
    return dict(sorted(found.items(), key=lambda kv: (kv[0] != "import", kv[0])))


def _load(module: str) -> ModuleType:
    return importlib.import_module(module)


def usage(available: dict[str, str]) -> str:
    lines = ["usage: python -m bench [COMMAND] [OPTIONS]   (no COMMAND: run them all)", ""]
    width = max((len(n) for n in available), default=0)
    for name, module in available.items():
        lines.append(f"  {name:<{width}}  {getattr(_load(module), 'DESCRIPTION', '')}")
    lines.append("")
    lines.append("python -m bench COMMAND --help   shows a command's options")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    available = commands()
    if argv and argv[0] in ("-h", "--help", "help", "list"):
        print(usage(available))
        return 0
    if not argv:
        status = 0
        for name, module in available.items():
            print(f"== bench {name} ==", flush=True)
            status = max(status, _run(_load(module).main, []))
        return status
    name, rest = argv[0], argv[1:]
    if name not in available:
        print(f"bench: unknown command {name!r}\n\n{usage(available)}", file=sys.stderr)
        return 2
    return _run(_load(available[name]).main, rest)


def _run(entry: Callable[[list[str]], int], argv: list[str]) -> int:
    try:
        return entry(argv)
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
