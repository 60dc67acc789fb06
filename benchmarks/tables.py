"""The throughput tables of docs/performance.md, generated from the benchmarks' JSON (never typed by hand).

Each table sits in docs/performance.md between ``<!-- generated: NAME -->`` and
``<!-- end generated: NAME -->``; this script rewrites what is between them:

* ``cpu``: ``benchmarks/results/throughput_cpu/results.json`` (``benchmarks/throughput.py --json``);
* ``gpu_eager``: ``benchmarks/results/throughput_h200_eager/results.json`` (the same format);
* ``gpu_check``: ``benchmarks/results/gpu_check/*.json`` (``benchmarks/gpu_check.py``'s
  ``gpu_check.json``) when present, otherwise a line saying that the figures are not measured yet and
  the command that measures them.

Only the standard library is used, so the docs test can check the tables in a second::

    python benchmarks/tables.py           # rewrite the tables
    python benchmarks/tables.py --check   # exit 1 if docs/performance.md is not up to date
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
PAGE = ROOT / "docs" / "performance.md"
GPU_CHECK_COMMAND = "python benchmarks/gpu_check.py --out benchmarks/results/gpu_check"
#: gpu_check.py's measurement modes, in the order of the columns.
GPU_MODES = (
    ("fp32", "fp32"),
    ("bf16", "bf16-mixed"),
    ("fused_bf16", "fast path, bf16"),
    ("fused_fp32", "fast path, fp32"),
    ("host_floor", "host floor (update doing nothing)"),
)


def number(value: Any, digits: int = 0) -> str:
    """``12,345`` (or ``1.23`` with digits); a dash for a missing value."""
    if value is None or value == "" or (isinstance(value, float) and value != value):
        return "-"
    if isinstance(value, str):
        return value
    return f"{value:,.{digits}f}"


def relative(path: Path) -> str:
    """The path relative to the repository (its name alone if it lies outside)."""
    try:
        return path.resolve().relative_to(ROOT).as_posix()
    except ValueError:
        return path.name


def link(path: Path) -> str:
    """A link from docs/ to a file of the repository."""
    return f"[{path.parent.name}/{path.name}](../{relative(path)})"


def load(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def manifest_line(folder: Path) -> str:
    """Command, commit, date and machine from the folder's manifest."""
    manifest = load(folder / "manifest.json")
    if not manifest:
        return f"No manifest in {relative(folder)}."
    run = manifest["runs"][0]
    libraries = ", ".join(f"{k} {v}" for k, v in run.get("libraries", {}).items())
    return (
        f"Machine: {run['machine']}. Libraries: {libraries}. Commit {run['commit']}, {run['date']}. "
        f"Command: `{run['command']}` ({link(folder / 'manifest.json')})."
    )


def rate(value: Any) -> str:
    """Samples per second: whole numbers from 100 up, one decimal below."""
    return number(value, 0 if isinstance(value, (int, float)) and value >= 100 else 1)


def cpu_table() -> str:
    folder = RESULTS / "throughput_cpu"
    data = load(folder / "results.json")
    if data is None:
        return "Not measured yet: `python benchmarks/throughput.py --threads 2 --json results.json`."
    header = data["header"]
    lines = [
        manifest_line(folder),
        f"Precision {header.get('precision')}, {header.get('threads')} threads.",
        "",
        "| config | batch | samples/s | samples per CPU-second | seconds per step |",
        "| --- | --- | --- | --- | --- |",
    ]
    for row in data["rows"]:
        if "error" in row:
            lines.append(f"| `{row['config']}` | {number(row.get('batch'))} | error: {row['error']} | | |")
            continue
        lines.append(
            f"| `{row['config']}` | {number(row.get('batch'))} | {rate(row.get('samples_per_s'))} | "
            f"{rate(row.get('samples_per_cpu_s'))} | {number(row.get('s_per_it'), 4)} |"
        )
    return "\n".join(lines)


def gpu_eager_table() -> str:
    folder = RESULTS / "throughput_h200_eager"
    data = load(folder / "results.json")
    if data is None:
        return "Not measured yet: `python benchmarks/throughput.py --accelerator gpu`."
    lines = [
        manifest_line(folder),
        "",
        "| config | precision | samples/s | seconds per iteration | reference on the same GPU |",
        "| --- | --- | --- | --- | --- |",
    ]
    for row in data["rows"]:
        reference = ""
        if "reference" in row:
            reference = (
                f"{row['reference']}: {number(row.get('reference_samples_per_s'))} samples/s, "
                f"{number(row.get('reference_s_per_it'), 2)} s per iteration; ours {number(row.get('ratio'), 2)}x"
            )
        lines.append(
            f"| `{row['config']}` | {row['precision']} | {rate(row.get('samples_per_s'))} | "
            f"{number(row.get('s_per_it'), 2)} | {reference} |"
        )
    return "\n".join(lines)


def gpu_check_table() -> str:
    folder = RESULTS / "gpu_check"
    files = sorted(folder.glob("*.json")) if folder.is_dir() else []
    files = [f for f in files if f.name != "manifest.json" and "rows" in (load(f) or {})]
    if not files:
        return (
            "The fast path's GPU throughput is **not measured yet**. `benchmarks/gpu_check.py` measures it "
            "(every shipped config in fp32, bf16-mixed and on the fast path, on one GPU; its docstring gives "
            f"the recipe) and writes `gpu_check.json` and `gpu_check.md`: `{GPU_CHECK_COMMAND}`, then "
            "`python benchmarks/tables.py` puts the table here."
        )
    blocks = []
    for path in files:
        data = load(path) or {}
        header = data.get("header", {})
        device = header.get("gpu") or header.get("device") or "GPU"
        versions = ", ".join(f"{k} {header[k]}" for k in ("torch", "lightning", "cuda") if k in header)
        rows: dict[str, dict[str, dict[str, Any]]] = {}
        for row in data.get("rows", []):
            rows.setdefault(row.get("config", "?"), {})[row.get("mode", "?")] = row
        lines = [
            f"{link(path)}: {device} ({versions}).",
            "",
            "| config | " + " | ".join(title for _, title in GPU_MODES) + " |",
            "| --- |" + " --- |" * len(GPU_MODES),
        ]
        for config, modes in rows.items():
            cells = []
            for mode, _ in GPU_MODES:
                row = modes.get(mode)
                if row is None:
                    cells.append("-")
                elif "error" in row:
                    cells.append("error")
                elif config.startswith("jem_") and row.get("s_per_it"):
                    cells.append(f"{number(row.get('s_per_it'), 3)} s/it")
                else:
                    cells.append(rate(row.get("samples_per_s")))
            lines.append(f"| `{config}` | " + " | ".join(cells) + " |")
        blocks.append("\n".join(lines))
    return "Samples/s (JEM: seconds per iteration).\n\n" + "\n\n".join(blocks)


TABLES: dict[str, Callable[[], str]] = {"cpu": cpu_table, "gpu_eager": gpu_eager_table, "gpu_check": gpu_check_table}


def render(text: str) -> str:
    """``text`` with every generated block replaced by its current table."""
    for name, table in TABLES.items():
        start, end = f"<!-- generated: {name} -->", f"<!-- end generated: {name} -->"
        pattern = re.compile(re.escape(start) + r"\n.*?" + re.escape(end), flags=re.DOTALL)
        if not pattern.search(text):
            raise ValueError(f"{relative(PAGE)} has no generated block {name!r}")
        block = f"{start}\n{table()}\n{end}"
        text = pattern.sub(lambda _, block=block: block, text)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the page is not up to date")
    args = parser.parse_args(argv)
    text = PAGE.read_text(encoding="utf-8")
    new = render(text)
    if args.check:
        if new != text:
            print(f"{relative(PAGE)} is out of date: run python benchmarks/tables.py", file=sys.stderr)
            return 1
        return 0
    PAGE.write_text(new, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
