"""Sort ThreadSanitizer reports by whose code they are in (used by scripts/ft-tsan).

    python3 scripts/tsan_reports.py PATTERN LOG...

Reads TSan log files (``TSAN_OPTIONS=log_path=...`` writes one per process),
splits them into reports (``WARNING: ThreadSanitizer: ...`` up to its
``SUMMARY:`` line) and prints every report that has a stack frame matching the
regular expression PATTERN (a source path or function of the code under test),
then one line: ``tsan: N report(s) in <code>, M elsewhere``.  Exit status 1 when
any report matches, else 0.  Reports elsewhere (CPython's own, not covered by
its suppression file) are listed by their SUMMARY line only, as a note.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

FRAME = re.compile(r"^\s*#\d+ ")


def reports(text: str) -> list[str]:
    found: list[str] = []
    current: list[str] | None = None
    for line in text.splitlines():
        if "WARNING: ThreadSanitizer:" in line:
            current = [line]
        elif current is not None:
            current.append(line)
            if line.startswith("SUMMARY: ThreadSanitizer"):
                found.append("\n".join(current))
                current = None
    if current is not None:  # a log cut short (the process died mid-report)
        found.append("\n".join(current))
    return found


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    ours = re.compile(argv[0])
    mine: list[str] = []
    other: list[str] = []
    for name in argv[1:]:
        for report in reports(Path(name).read_text(errors="replace")):
            frames = [ln for ln in report.splitlines() if FRAME.match(ln)]
            (mine if any(ours.search(f) for f in frames) else other).append(report)
    for report in mine:
        print(report, end="\n\n")
    for report in other:
        summary = [ln for ln in report.splitlines() if ln.startswith("SUMMARY:")]
        print("note (not ours): " + (summary[0] if summary else report.splitlines()[0]))
    print(f"tsan: {len(mine)} report(s) in {argv[0]!r}, {len(other)} elsewhere")
    return 1 if mine else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
