"""``packdist package …``"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import TYPE_CHECKING

import click
from rich.table import Table

from packdist.cli.common import home_option, iso, json_option, print_json, print_table, resolve_home
from packdist.core.digest import Digest
from packdist.core.manifest import EntryType, Manifest
from packdist.core.names import parse_ref
from packdist.core.words import human_bytes
from packdist.errors import IntegrityError, NotFound
from packdist.site.home import SiteHome
from packdist.store.base import PackageRecord

if TYPE_CHECKING:
    from packdist.site.delta_prepare import Prepared


@click.group()
@home_option
def package() -> None:
    """Import, list, show, verify and remove packages."""


def _record_json(p: PackageRecord) -> dict[str, object]:
    return {
        "id": p.id,
        "name": p.name,
        "version": p.version,
        "ref": p.ref,
        "size": p.size,
        "files": p.file_count,
        "chunks": p.chunk_count,
        "created_at": iso(p.created_at),
    }


@package.command("create")
@home_option
@click.argument("directory", type=click.Path(file_okay=True, dir_okay=True, path_type=Path))
@click.option("--name", required=True, help="Package name.")
@click.option("--version", "version", required=True, help="Package version.")
@json_option
def package_create(directory: Path, name: str, version: str, as_json: bool) -> None:
    """Import DIRECTORY into the content library as NAME@VERSION."""
    from packdist.site.importer import import_tree

    home = SiteHome.open(resolve_home())
    started = time.monotonic()
    deltas: list[Prepared | str] = []
    record, created = import_tree(home, directory, name, version, prepared=deltas.append)
    took = time.monotonic() - started
    if as_json:
        print_json({**_record_json(record), "created": created, **_deltas_json(deltas)})
    elif created:
        click.echo(
            f"{record.ref} created: {record.file_count} files, {human_bytes(record.size)},"
            f" id {record.id[:16]} ({took:.1f}s)"
        )
        for line in map(_deltas_words, deltas):
            if line:
                click.echo(line)
    else:
        click.echo(f"{record.ref} already exists with the same content (id {record.id[:16]})")


def _deltas_words(done: Prepared | str) -> str:
    """One line on the deltas an import prepared ("" if there was nothing to prepare)."""
    if isinstance(done, str):
        return f"deltas not prepared ({done}): servers' requests will encode them"
    if not done.against or not (done.chunks or done.whole or done.skipped):
        return ""
    one = done.chunks == 1
    line = (
        f"deltas against {done.against} prepared: {done.chunks}"
        f" new chunk{'' if one else 's'} ({human_bytes(done.chunk_bytes)})"
        f" cross{'es' if one else ''} as {human_bytes(done.delta_bytes)} ({done.seconds:.1f}s)"
    )
    if done.whole:
        line += f"; {done.whole} more cross whole (no delta pays)"
    if done.skipped:
        line += f"; {done.skipped} more are encoded when first asked for"
    return line


def _deltas_json(deltas: list[Prepared | str]) -> dict[str, object]:
    if not deltas:
        return {}
    done = deltas[0]
    if isinstance(done, str):
        return {"deltas": {"error": done}}
    return {"deltas": dataclasses.asdict(done)}


def _find(home: SiteHome, ref: str) -> tuple[PackageRecord, Manifest]:
    name, version = parse_ref(ref)
    store = home.store()
    try:
        record = store.find_package(name, version)
        if record is None:
            raise NotFound(f"no package {name}@{version}")
        data, _ = store.package_manifest(record.id)
    finally:
        store.close()
    return record, Manifest.parse(data)


@package.command("list")
@home_option
@json_option
def package_list(as_json: bool) -> None:
    """List packages with size, file count and id."""
    home = SiteHome.open(resolve_home())
    store = home.store()
    try:
        records = store.list_packages()
    finally:
        store.close()
    if as_json:
        print_json({"packages": [_record_json(p) for p in records]})
        return
    if not records:
        click.echo("no packages yet (import one with 'packdist package create DIR')")
        return
    table = Table(box=None)
    for col in ("package", "size", "files", "id", "created"):
        table.add_column(col)
    for p in records:
        table.add_row(p.ref, human_bytes(p.size), str(p.file_count), p.id[:16], iso(p.created_at))
    print_table(table)


@package.command("show")
@home_option
@click.argument("ref")
@json_option
def package_show(ref: str, as_json: bool) -> None:
    """Show the manifest of NAME@VERSION."""
    home = SiteHome.open(resolve_home())
    record, manifest = _find(home, ref)
    if as_json:
        print_json({**_record_json(record), "manifest": manifest.to_json()})
        return
    click.echo(f"{record.ref}  id {record.id}")
    click.echo(
        f"{record.file_count} files, {human_bytes(record.size)}, {record.chunk_count} chunks,"
        f" created {iso(record.created_at)}"
    )
    for e in manifest.entries:
        if e.type is EntryType.DIR:
            click.echo(f"  d          {e.path}/")
        elif e.type is EntryType.SYMLINK:
            click.echo(f"  l          {e.path} -> {e.target}")
        else:
            flag = "x" if e.executable else "-"
            click.echo(f"  {flag} {e.size:>9}  {e.path}  ({len(e.chunks)} chunks)")


@package.command("verify")
@home_option
@click.argument("ref")
@json_option
def package_verify(ref: str, as_json: bool) -> None:
    """Re-hash every chunk of NAME@VERSION in the library; report missing or corrupt ones."""
    home = SiteHome.open(resolve_home())
    record, manifest = _find(home, ref)
    library = home.library
    problems: dict[Digest, str] = {}
    sizes = manifest.chunk_sizes()
    for digest, size in sizes.items():
        problem = library.check(digest, size)
        if problem:
            problems[digest] = problem
    affected = sorted({e.path for e in manifest.files() for c in e.chunks if c.digest in problems})
    if as_json:
        print_json(
            {
                "package": record.ref,
                "id": record.id,
                "chunks": len(sizes),
                "ok": not problems,
                "problems": [{"chunk": d.hex, "problem": p} for d, p in problems.items()],
                "affected_files": affected,
            }
        )
    else:
        for d, p in problems.items():
            click.echo(f"chunk {d.short}…: {p}")
        for path in affected:
            click.echo(f"  affects {path}")
    if problems:
        if not as_json:
            raise IntegrityError(
                f"{record.ref}: {len(problems)} of {len(sizes)} chunks missing or corrupt"
            )
        raise SystemExit(1)
    if not as_json:
        click.echo(f"{record.ref}: all {len(sizes)} chunks verified")
