"""Benchmarks for packdist, run as ``python -m bench [COMMAND] [OPTIONS]``.

Every module ``bench/<name>_bench.py`` is a sub-command ``<name>`` (underscores become
dashes): it defines ``DESCRIPTION`` (one line) and ``main(argv) -> int``. Shared helpers
(test-tree generation, timing a child with its peak RSS, tables) live in
:mod:`bench.common`. Benchmarks are never part of ``make test``.
"""
