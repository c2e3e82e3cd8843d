"""Summarise a py-spy profile in collapsed-stack form (`--format raw`, what `--profile` writes).

    .venv/bin/python -m bench.profile_summary /tmp/prof/relay-redis+kafka.txt [--top 25]

Prints the functions with the most samples on the CPU themselves (self) and with the most samples
anywhere on the stack (inclusive), as shares of all samples.
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path


def summarise(path: Path, top: int) -> str:
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [f.split(" (", 1)[0] + _where(f) for f in stack.split(";")]
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    lines = [f"{path.name}: {total} samples"]
    for title, counter in (("self", own), ("inclusive", inclusive)):
        lines.append(f"  top {top} by {title}:")
        for frame, count in counter.most_common(top):
            lines.append(f"    {100 * count / max(total, 1):5.1f}%  {frame}")
    return "\n".join(lines)


def _where(frame: str) -> str:
    # "function (path/to/module.py:123)" -> " (module.py)"
    _, _, rest = frame.partition(" (")
    location = rest.rstrip(")").rsplit(":", 1)[0]
    return f" ({'/'.join(location.split('/')[-2:])})" if location else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("profiles", nargs="+", type=Path)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    for path in args.profiles:
        print(summarise(path, args.top))


if __name__ == "__main__":
    main()
