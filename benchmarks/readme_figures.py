"""Rewrite the README figure blocks from the benchmarks' JSON (benchmarks/results/*.json).

    python benchmarks/readme_figures.py            # rewrite README.md, bentos/ and jobs/ READMEs
    python benchmarks/readme_figures.py --check    # exit 1 if a block is stale

A block is the text between `<!-- figures:NAME -->` and `<!-- /figures:NAME -->`; NAME is a
results file's stem (`train_throughput` for benchmarks/results/train_throughput.json), or
`STEM/TABLE` for one of the file's extra `tables`. The block becomes a markdown table of the
file's rows and one line naming the machine (CPU model and flags), the date and the command,
then the run's note (a `STEM/TABLE` block names the run only). Blocks without a results file
are left as they are (and listed).
Running it twice changes nothing.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
READMES = (ROOT / "README.md", ROOT / "bentos" / "README.md",
           ROOT / "src" / "tuneship" / "jobs" / "README.md")
BLOCK = re.compile(r"(<!-- figures:(?P<name>[\w./-]+) -->\n)(?P<body>.*?)(<!-- /figures:(?P=name) -->)",
                   re.DOTALL)


def _cell(value, fmt: str | None) -> str:
    if value is None:
        return ""
    if fmt and isinstance(value, int | float) and not isinstance(value, bool):
        return fmt.format(value)
    return str(value).replace("|", "\\|")


def table(rows: list[dict], formats: dict[str, str]) -> list[str]:
    """A markdown table: columns in first-seen order, numbers right-aligned."""
    columns: list[str] = []
    for row in rows:
        columns += [key for key in row if key not in columns]
    numeric = {c: all(isinstance(r.get(c), int | float) for r in rows if r.get(c) is not None)
               for c in columns}
    lines = ["| " + " | ".join(columns) + " |",
             "|" + "|".join("---:" if numeric[c] else "---" for c in columns) + "|"]
    lines += ["| " + " | ".join(_cell(row.get(c), formats.get(c)) for c in columns) + " |"
              for row in rows]
    return lines


def machine_line(record: dict) -> str:
    """Where, when and how the figures were measured, in one line."""
    m = record.get("machine", {})
    flags = ", ".join(m.get("flags") or []) or "none of the AVX2/AVX-512/AMX flags"
    cores = m.get("cores")
    usable = m.get("usable_cores")
    cores_text = f"{cores} cores" if usable in (None, cores) else f"{cores} cores ({usable} usable)"
    device = f"GPU {m['gpu']}" if m.get("gpu") else "no GPU"
    torch = f", torch {m['torch']}" if m.get("torch") else ""
    load = m.get("load_average_1m")
    load_text = f", load average {load:g} at the end" if load is not None else ""
    date = str(record.get("date", ""))[:10]
    cpu = m.get("cpu_model") or "an unknown CPU"
    cpu += f" (family {m['cpu_family']})" if m.get("cpu_family") else ""
    return (f"Measured {date} on {cpu}, {cores_text}, "
            f"flags {flags}, {device}{torch}{load_text}: `{record.get('command', '')}`")


def render(record: dict, table_name: str | None = None) -> str:
    """The body of one figures block (ends with a newline)."""
    rows = record["rows"] if table_name is None else record.get("tables", {})[table_name]
    lines = ["", *table(rows, record.get("formats", {})), ""]
    if table_name is not None:  # a second table of a run: its block names the run, not again the machine
        lines += [f"The same run ({str(record.get('date', ''))[:10]}): `{record.get('command', '')}`.", ""]
        return "\n".join(lines) + "\n"
    lines += [*record.get("notes", []), ""] if record.get("notes") else []
    lines.append(machine_line(record) + ".")
    if record.get("note"):
        lines.append(record["note"])
    lines.append("")
    return "\n".join(lines) + "\n"


def load(name: str, results: Path) -> tuple[dict, str | None] | None:
    stem, _, table_name = name.partition("/")
    path = results / f"{stem}.json"
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    if table_name and table_name not in record.get("tables", {}):
        return None
    return record, table_name or None


def rewrite(text: str, results: Path, missing: list[str]) -> str:
    def block(match: re.Match) -> str:
        found = load(match["name"], results)
        if found is None:
            missing.append(match["name"])
            return match[0]
        return match[1] + render(*found) + match[4]

    return BLOCK.sub(block, text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="change nothing; exit 1 if a README block differs from its JSON")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("readmes", nargs="*", type=Path, default=list(READMES))
    args = parser.parse_args(argv)
    stale = []
    for readme in (path.resolve() for path in args.readmes):
        text = readme.read_text(encoding="utf-8")
        missing: list[str] = []
        new = rewrite(text, args.results, missing)
        shown = readme.relative_to(ROOT) if readme.is_relative_to(ROOT) else readme
        for name in missing:
            print(f"{shown}: figures:{name}: no results JSON, left as it is", file=sys.stderr)
        if new == text:
            continue
        stale.append(shown)
        if not args.check:
            readme.write_text(new, encoding="utf-8")
            print(f"{shown}: figures rewritten")
    if args.check and stale:
        print("stale figures in " + ", ".join(map(str, stale)) + ": run `make figures`",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
