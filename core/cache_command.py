"""``mentor cache``: list the teacher caches and score tables a project's runs share, and remove them.

    mentor cache [--dir mlruns/cache]                 # what is there, how large, built by which stage
    mentor cache --remove KEY [KEY ...]               # remove entries (a key's first characters suffice)
    mentor cache --clear                              # remove every entry

Removing is safe: nothing refers to an entry, and the next run that needs it
builds it again. An entry being built (its lock held) is not removed.
"""

from __future__ import annotations

from pathlib import Path

from .cli_common import EXIT_USAGE, err


def cmd_cache(args) -> int:
    from .teacher_cache.files import human_bytes
    from .teacher_cache.inventory import busy, entries, remove

    root = Path(args.dir)
    found = entries(root)
    if args.remove or args.clear:
        chosen = found if args.clear else []
        for key in args.remove or []:
            matches = [e for e in found if e.key.startswith(key)]
            if len(matches) != 1:
                err(f"error: {key!r} matches {len(matches)} entries in {root}"
                    + ("" if matches else " (mentor cache lists them)"))
                return EXIT_USAGE
            chosen += matches
        freed = 0
        for entry in chosen:
            if busy(entry.folder):
                err(f"{entry.key}: being built by another process; left as it is")
                continue
            remove(entry)
            freed += entry.bytes
            print(f"removed {entry.kind} {entry.key} ({human_bytes(entry.bytes)})")
        print(f"freed {human_bytes(freed)} in {root}")
        return 0
    if not found:
        print(f"{root}: no teacher caches or score tables")
        return 0
    rows = [("kind", "key", "size", "state", "built by", "holds")]
    for e in found:
        state = "building" if busy(e.folder) else ("complete" if e.complete else "partial")
        rows.append((e.kind, e.key[:12], human_bytes(e.bytes), state, e.origin or "-", e.contents))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r[:5], widths, strict=True)) + "  " + r[5])
    print(f"{len(found)} entries, {human_bytes(sum(e.bytes for e in found))} in {root}")
    return 0
