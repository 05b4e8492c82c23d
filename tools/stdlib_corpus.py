"""Print the first N bytes of this Python's standard library source: a real corpus of code to set beside prose.

    python tools/stdlib_corpus.py 565346 > /tmp/stdlib.txt

The top-level modules (`<stdlib>/*.py`, no packages or tests), in sorted order, as their raw bytes: the same
corpus on every machine with the same Python version, which the first line of stderr names.
"""

from __future__ import annotations

import sys
import sysconfig
from pathlib import Path


def stdlib_source(n_bytes: int) -> bytes:
    """The first `n_bytes` of the standard library's top-level modules, concatenated in sorted order."""
    parts, total = [], 0
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        parts.append(path.read_bytes())
        total += len(parts[-1])
        if total >= n_bytes:
            break
    return b"".join(parts)[:n_bytes]


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not argv[0].isdigit() or int(argv[0]) <= 0:
        print("usage: python tools/stdlib_corpus.py N_BYTES > FILE", file=sys.stderr)
        return 2
    print(f"Python {sys.version.split()[0]} standard library, first {argv[0]} bytes", file=sys.stderr)
    sys.stdout.buffer.write(stdlib_source(int(argv[0])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
