"""The ``nbkit`` commands that report rather than build: models, devices, cache, doctor."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from nbkit.engines.registry import engines
from nbkit.infra.cache import Cache


def mib(size: int) -> str:
    return f"{size / 1024 / 1024:.1f} MiB"


def print_table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> None:
    cells = [list(map(str, header))] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    for index, row in enumerate(cells):
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        if index == 0:
            print("  ".join("-" * w for w in widths))


def cmd_models(args: argparse.Namespace) -> int:
    from nbkit.sources.models import describe_bundled

    print("Bundled models (work offline):")
    print_table(
        [
            (m["name"], "yes" if m["installed"] else f"no: {m['install']}", m["description"])
            for m in describe_bundled()
        ],
        ["name", "installed", "description"],
    )
    entries = Cache(args.cache_dir).entries()
    print()
    if not entries:
        print("Nothing in the cache yet: run `nbkit quickstart` or `nbkit export`.")
        return 0
    print("In the cache:")
    print_table(
        [
            (
                e.metadata.get("source_name", e.manifest.get("name")),
                e.kind,
                e.metadata.get("label", ""),
                mib(e.size_bytes),
                e.path,
            )
            for e in entries
        ],
        ["model", "kind", "config", "size", "folder"],
    )
    return 0


def cmd_devices(args: argparse.Namespace) -> int:
    from nbkit.engines.openvino.devices import list_devices

    devices = list_devices()
    if args.json:
        print(json.dumps([d.__dict__ for d in devices], indent=2, default=str))
        return 0
    print_table(
        [
            (
                d.name,
                d.full_name,
                ", ".join(d.capabilities),
                d.properties.get("PERFORMANCE_HINT", "-"),
                d.properties.get("INFERENCE_PRECISION_HINT", "-"),
            )
            for d in devices
        ],
        ["device", "full name", "capabilities", "hint", "precision"],
    )
    print("\nAlso usable: AUTO (OpenVINO picks), HETERO:<devices>, MULTI:<devices>.")
    print()
    for engine in engines():  # what each engine can run on here
        reason = engine.missing()
        where = ", ".join(engine.devices()) if reason is None else f"not installed ({reason})"
        print(f"{engine.name} ({engine.title}): {where}")
    return 0


def cmd_cache(args: argparse.Namespace) -> int:
    cache = Cache(args.cache_dir)
    if args.action == "path":
        print(cache.root)
    elif args.action == "list":
        _list_cache(cache, args.kind)
    elif args.action == "clear":
        return _clear_cache(cache, args.kind, incomplete_only=args.incomplete, yes=args.yes)
    return 0


def _list_cache(cache: Cache, kind: str | None) -> None:
    entries = cache.entries(kind)
    print_table(
        [
            (
                e.kind,
                e.metadata.get("source_name", ""),
                e.metadata.get("label", ""),
                mib(e.size_bytes),
                e.path.name,
            )
            for e in entries
        ],
        ["kind", "model", "config", "size", "folder"],
    )
    total = sum(e.size_bytes for e in entries)
    print(f"\n{len(entries)} entries, {mib(total)} in {cache.root}")
    if cache.root.exists() and not cache.is_nbkit_cache:
        print(f"note: {cache.root} is not an nbkit cache (no marker); nbkit removes nothing from it")
    for folder in cache.incomplete():
        if folder.removable:
            print(
                f"leftover: {folder.path} ({mib(folder.size_bytes)}, {folder.reason}); "
                "`nbkit cache clear --incomplete` removes it"
            )
        elif folder.state == "building":
            print(f"in progress: {folder.path} ({folder.reason})")
        else:
            print(f"not nbkit's: {folder.path} ({folder.reason})")


def _clear_cache(cache: Cache, kind: str | None, *, incomplete_only: bool, yes: bool) -> int:
    plan = cache.plan_clear(kind, incomplete_only=incomplete_only)
    for item in plan.skipped:
        print(f"skip:   {item.path} ({item.description}; {item.reason})")
    for item in plan.foreign:
        print(f"leave:  {item.path} ({item.reason})")
    if not plan.removed:
        print(f"Nothing to remove in {cache.root}.")
        return 0
    for item in plan.removed:
        print(f"remove: {item.path} ({item.description}, {mib(item.size_bytes)})")
    summary = f"{len(plan.removed)} folder(s), {mib(plan.removed_bytes)}"
    if not yes:
        if not sys.stdin.isatty():
            print(f"Would remove {summary}; run again with --yes to remove them.")
            return 0
        answer = input(f"Remove {summary} from {cache.root}? [y/N] ").strip().lower()
        if answer not in ("y", "yes"):
            print("Nothing removed.")
            return 0
    done = cache.clear(kind, incomplete_only=incomplete_only)
    for item in done.skipped:
        if item.path not in {s.path for s in plan.skipped}:
            print(f"skip:   {item.path} ({item.description}; {item.reason})")
    print(f"Removed {len(done.removed)} folder(s), {mib(done.removed_bytes)}, from {cache.root}")
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from nbkit.engines.openvino.devices import list_devices
    from nbkit.infra.disk import (
        DISK_MARGIN_BYTES,
        FREE_SPACE_ADVICE,
        QUICKSTART_BYTES,
        format_bytes,
        free_bytes,
    )
    from nbkit.infra.versions import EXPORT_LIBRARIES, versions
    from nbkit.sources.models import describe_bundled

    problems = 0
    for name, version in versions((*EXPORT_LIBRARIES, "nncf", "openvino-genai")).items():
        print(f"{name:22} {version or 'MISSING'}")
        problems += version is None
    try:
        from transformers import LlamaForCausalLM  # noqa: F401  # fails when torchvision mismatches torch
    except Exception as exc:
        print(f"transformers model classes do not import: {exc}")
        problems += 1
    print("devices:", ", ".join(d.name for d in list_devices()))
    from nbkit.errors import MissingDependencyError
    from nbkit.server.server import require_serve

    try:  # an optional extra: reported, not counted as a problem
        require_serve()
        print("nbkit serve: available")
    except MissingDependencyError as exc:
        print(f"nbkit serve: not installed ({exc})")
    for model in describe_bundled():
        state = "installed" if model["installed"] else f"NOT installed ({model['install']})"
        print(f"bundled model {model['name']}: {state}")
        problems += not model["installed"]
    cache_root = Cache(args.cache_dir).root
    free = free_bytes(cache_root)
    print(f"cache: {cache_root} ({format_bytes(free)} free)")
    if free < QUICKSTART_BYTES + DISK_MARGIN_BYTES:
        print(
            f"warning: the quickstart on the bundled model writes about {format_bytes(QUICKSTART_BYTES)} "
            f"into the cache; {FREE_SPACE_ADVICE}",
            file=sys.stderr,
        )
    if problems:
        print(f"{problems} problem(s) found", file=sys.stderr)
    return 1 if problems else 0
