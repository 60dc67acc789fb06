"""The docs stay honest: runnable commands parse, links resolve, results carry manifests, no machine paths.

* Every fenced block of README.md and docs/*.md preceded by the line ``<!-- runnable -->`` is read line
  by line; each ``python -m lightning_ebm ...`` in it (after an optional ``cmd &&``) runs in-process
  through ``lightning_ebm.cli.main`` with ``--print_config`` (``configs`` and ``--help`` as they are)
  and must exit 0. The config headers' commands are checked the same way.
* README's Quick start: the two lines the CI runs, and its fit command for 5 steps with
  ``--trainer.default_root_dir``, whose checkpoint must land there.
* Relative links and images (and their ``#anchors``) resolve; text under docs/ and benchmarks/results/
  holds no absolute path of a machine; every results folder has a manifest listing its files; the
  generated tables of docs/performance.md are up to date.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import re
import shlex
from pathlib import Path

import pytest

from lightning_ebm.cli import CONFIG_DIR, main, shipped_configs

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
METHOD_PAGES = ("rbm", "dbn", "dbm", "dem", "meg", "jem")
OTHER_PAGES = ("data", "evaluation", "performance", "development")
MARKER = "<!-- runnable -->"
PROGRAM = ("python", "-m", "lightning_ebm")
QUICK_START = (
    "pip install . && python -m lightning_ebm fit --config dem_toy.yaml --trainer.max_epochs 20",
    'pip install ".[dev]" && python -m pytest',
)
#: Absolute paths of a machine (a home, a scratch or temporary folder, a mount), after a space, a quote,
#: a bracket, '=' or the start of a line (so URLs do not match).
MACHINE_PATH = re.compile(r"""(?:^|[\s"'(`=\[])/(?:work|tmp|root|home|Users|mnt|scratch|private|var/folders)/""", re.M)
TEXT_SUFFIXES = {".md", ".json", ".txt", ".yaml", ".yml", ".csv", ".log"}


# ------------------------------------------------------------------------------------------- parsing
def fenced_blocks(text: str) -> list[tuple[int, bool, list[str]]]:
    """``(first line number, runnable, lines)`` of every fenced block."""
    lines = text.splitlines()
    blocks, i = [], 0
    while i < len(lines):
        if lines[i].lstrip().startswith("```"):
            start = i
            runnable = any(lines[j].strip() == MARKER for j in range(max(0, i - 2), i))
            i += 1
            body = []
            while i < len(lines) and not lines[i].lstrip().startswith("```"):
                body.append(lines[i])
                i += 1
            blocks.append((start + 2, runnable, body))
        i += 1
    return blocks


def joined(lines: list[str]) -> list[tuple[int, str]]:
    """Lines with backslash continuations joined: ``(offset of the first, text)``."""
    out, current, first = [], "", 0
    for n, line in enumerate(lines):
        if not current:
            first = n
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        out.append((first, current + line))
        current = ""
    if current:
        out.append((first, current))
    return out


def cli_commands(line: str) -> list[list[str]]:
    """The arguments of every ``python -m lightning_ebm`` command of a shell line (``a && b`` too)."""
    commands = []
    for part in re.split(r"&&|;", line):
        if part.strip().startswith(" ".join(PROGRAM) + " ") or part.strip() == " ".join(PROGRAM):
            commands.append(shlex.split(part, comments=True)[3:])
    return commands


def runnable_commands() -> list[tuple[str, list[str]]]:
    found = []
    for page in PAGES:
        for start, runnable, body in fenced_blocks(page.read_text(encoding="utf-8")):
            if not runnable:
                continue
            for offset, line in joined(body):
                for args in cli_commands(line):
                    found.append((f"{page.relative_to(ROOT)}:{start + offset}", args))
    return found


def header_commands() -> list[tuple[str, list[str]]]:
    """Commands in the config headers (optional ``[...]`` parts and a trailing ``  (note)`` dropped)."""
    found = []
    for name in shipped_configs():
        header = []
        for line in (CONFIG_DIR / name).read_text(encoding="utf-8").splitlines():
            if not line.startswith("#"):
                break
            header.append(line.lstrip("#"))
        for offset, line in joined(header):
            line = re.sub(r"\[[^\]]*\]", "", re.sub(r"\s{2,}\(.*\)\s*$", "", line))
            for args in cli_commands(line.strip()):
                found.append((f"configs/{name}:{offset + 1}", args))
    return found


def run_main(args: list[str]) -> tuple[int, str]:
    """``main(args)`` in-process: its exit status and what it printed."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            status = main(args)
        except SystemExit as exc:
            status = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return int(status or 0), out.getvalue()


def unique(commands: list[tuple[str, list[str]]]) -> list[tuple[str, list[str]]]:
    """The first occurrence of each command (``NAME`` and ``NAME.yaml`` are the same config)."""
    seen, out = set(), []
    for where, args in commands:
        key = tuple(a.removesuffix(".yaml") for a in args)
        if key not in seen:
            seen.add(key)
            out.append((where, args))
    return out


COMMANDS = runnable_commands()
HEADER_COMMANDS = header_commands()
TO_PARSE = unique(COMMANDS + HEADER_COMMANDS)


# -------------------------------------------------------------------------------------- the commands
@pytest.mark.parametrize(("where", "args"), TO_PARSE, ids=[w for w, _ in TO_PARSE])
def test_runnable_command_parses(where: str, args: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # nothing lands in the repository
    if args and args[0] in ("fit", "validate", "test", "predict") and "--print_config" not in args:
        args = [*args, "--print_config"]
    status, output = run_main(args)
    assert status == 0, f"{where}: python -m lightning_ebm {shlex.join(args)}\n{output[-2000:]}"


def test_every_page_with_commands_marks_some_runnable() -> None:
    pages = {where.split(":")[0] for where, _ in COMMANDS}
    for name in ("README.md", *(f"docs/{p}.md" for p in METHOD_PAGES)):
        assert name in pages, f"{name} has no <!-- runnable --> block with a python -m lightning_ebm command"


def test_readme_is_short_and_has_the_quick_start_the_ci_runs() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 300
    after = text.split("## Quick start", 1)[1]
    block = next(body for _, _, body in fenced_blocks(after))
    assert tuple(block[:2]) == QUICK_START, block
    # .ci/run takes the line after "## Quick start" and "```bash", then one more
    lines = after.splitlines()
    fence = next(i for i, line in enumerate(lines) if line.startswith("```bash"))
    assert lines[fence + 2] == QUICK_START[1]


def test_quick_start_fit_leaves_its_checkpoint_under_default_root_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """README's fit command for 5 steps: its logs and checkpoint under --trainer.default_root_dir."""
    work, root = tmp_path / "work", tmp_path / "runs"
    work.mkdir()
    monkeypatch.chdir(work)
    (args,) = cli_commands(QUICK_START[0])
    extra = [
        "--trainer.max_steps",
        "5",
        "--trainer.default_root_dir",
        str(root),
        "--trainer.enable_progress_bar",
        "false",
    ]
    status, output = run_main([*args, *extra])
    assert status == 0, output[-2000:]
    assert list(root.glob("dem_toy/version_*/checkpoints/last.ckpt")), sorted(map(str, root.rglob("*")))
    assert not list(work.iterdir()), sorted(map(str, work.rglob("*")))


def test_a_page_per_method_and_the_other_pages() -> None:
    for name in (*METHOD_PAGES, *OTHER_PAGES):
        assert (ROOT / "docs" / f"{name}.md").is_file(), name


def test_config_headers_are_short_and_name_a_command() -> None:
    for name in shipped_configs():
        lines = (CONFIG_DIR / name).read_text(encoding="utf-8").splitlines()
        header = [line for line in lines[: next(i for i, x in enumerate(lines) if not x.startswith("#"))]]
        assert 1 <= len(header) <= 6, f"{name}: {len(header)} header lines"
        assert any(where.startswith(f"configs/{name}:") for where, _ in HEADER_COMMANDS), name


# ----------------------------------------------------------------------------------------- the links
def slug(heading: str) -> str:
    """GitHub's anchor of a heading."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = page.read_text(encoding="utf-8")
    outside = re.sub(r"```.*?```", "", text, flags=re.S)
    return {slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+)$", outside, flags=re.M)}


def links(page: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
    text = re.sub(r"`[^`\n]*`", "", text)
    targets = re.findall(r"!?\[[^\]]*\]\(([^)\s]+)\)", text)
    targets += re.findall(r"""<img[^>]*\ssrc=["']([^"']+)["']""", text)
    return targets


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_relative_links_resolve(page: Path) -> None:
    broken = []
    for target in links(page):
        if re.match(r"^[a-z]+:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target} (no such heading)")
        if path and ROOT not in dest.parents and dest != ROOT:
            broken.append(f"{target} (outside the repository)")
    assert not broken, f"{page.relative_to(ROOT)}: " + "; ".join(broken)


# ------------------------------------------------------------------------------------- the results
def text_files() -> list[Path]:
    files = [ROOT / "README.md"]
    for folder in (ROOT / "docs", ROOT / "benchmarks"):
        files += [p for p in folder.rglob("*") if p.is_file() and p.suffix in {*TEXT_SUFFIXES, ".py"}]
    return files


def test_no_absolute_machine_paths_in_docs_and_benchmarks() -> None:
    hits = []
    for path in text_files():
        for match in MACHINE_PATH.finditer(path.read_text(encoding="utf-8", errors="replace")):
            hits.append(f"{path.relative_to(ROOT)}: {match.group(0).strip()}...")
    assert not hits, hits


def test_every_results_folder_has_a_manifest_listing_its_files() -> None:
    folders = [p for p in (ROOT / "benchmarks" / "results").iterdir() if p.is_dir()]
    assert folders
    for folder in folders:
        manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
        listed = set()
        assert manifest["runs"], folder.name
        for run in manifest["runs"]:
            for key in ("command", "commit", "date", "machine", "libraries", "files"):
                assert run.get(key), f"{folder.name}: a run without {key}"
            listed.update(run["files"])
        present = {p.name for p in folder.iterdir() if p.is_file() and p.name != "manifest.json"}
        assert listed == present, (
            f"{folder.name}: listed {sorted(listed - present)}, unlisted {sorted(present - listed)}"
        )


def load_tables():  # noqa: ANN201 - the module of benchmarks/tables.py
    spec = importlib.util.spec_from_file_location("benchmark_tables", ROOT / "benchmarks" / "tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_performance_tables_are_generated_from_the_results() -> None:
    tables = load_tables()
    text = tables.PAGE.read_text(encoding="utf-8")
    assert tables.render(text) == text, "docs/performance.md is out of date: run python benchmarks/tables.py"


def test_gpu_check_results_become_a_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without gpu_check results the page says 'not measured yet'; with them it shows their figures."""
    tables = load_tables()
    monkeypatch.setattr(tables, "RESULTS", tmp_path)
    assert "not measured yet" in tables.gpu_check_table()
    rows = [{"config": "meg_cifar", "mode": "fp32", "samples_per_s": 4686.4},
            {"config": "meg_cifar", "mode": "fused_bf16", "samples_per_s": 51234.0},
            {"config": "jem_cifar", "mode": "bf16", "s_per_it": 0.0912, "samples_per_s": 701.0},
            {"config": "dem_toy", "mode": "fused_fp32", "error": "boom"}]  # fmt: skip
    (tmp_path / "gpu_check").mkdir()
    (tmp_path / "gpu_check" / "gpu_check.json").write_text(json.dumps({"header": {"gpu": "NVIDIA H200"}, "rows": rows}))
    table = tables.gpu_check_table()
    assert "NVIDIA H200" in table and "not measured yet" not in table
    assert "| `meg_cifar` | 4,686 | - | 51,234 | - |" in table
    assert "0.091 s/it" in table and "error" in table


REPO_FILE = re.compile(r"\b((?:tests|benchmarks|lightning_ebm)/[\w/.-]+\.(?:py|yaml))")


def test_scripts_and_tests_named_in_the_docs_exist() -> None:
    missing = []
    for page in PAGES:
        for path in REPO_FILE.findall(page.read_text("utf-8")):
            if not (ROOT / path).is_file():
                missing.append(f"{page.relative_to(ROOT)}: {path}")
    assert not missing, missing
