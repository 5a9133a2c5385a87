"""The README against the code: its exit-status table against pipeline/exit_status.py, and
every path and module its layout (and its text) names against the tree."""

from __future__ import annotations

import pathlib
import re

from pipeline import exit_status

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
# Python's own status for an uncaught exception: what a bug exits with (pipeline/run.py
# re-raises it); the one status the README lists that the code does not define.
UNCAUGHT = 1


def section(title: str) -> str:
    """The README's text under `## title` (or ###), up to the next heading of any level."""
    found = re.search(rf"^#+ {re.escape(title)}\n(.*?)(?=^#+ |\Z)", README, re.M | re.S)
    assert found, f"README has no section {title!r}"
    return found[1]


def exit_status_table() -> dict[int, str]:
    """{status: meaning} from the README's exit-status table ('| 130, 143 | ...' gives two)."""
    rows = {}
    for line in section("Exit status").splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if not line.startswith("|") or not re.fullmatch(r"\d+(, *\d+)*", cells[0]):
            continue  # prose, the header or the separator row
        for status in re.split(r", *", cells[0]):
            assert int(status) not in rows, f"status {status} is in the table twice"
            rows[int(status)] = cells[1]
    return rows


def code_statuses() -> set[int]:
    return {*exit_status.MEANINGS, *exit_status.INTERRUPTED.values()}


def test_the_exit_status_table_lists_exactly_the_codes_statuses():
    table = exit_status_table()
    assert code_statuses() <= set(table), f"not in the README: {code_statuses() - set(table)}"
    only_readme = set(table) - code_statuses() - {UNCAUGHT}
    assert not only_readme, f"in the README, not in pipeline/exit_status.py: {only_readme}"
    assert UNCAUGHT in table  # what a bug exits with is said too
    assert {130, 143} <= set(table)  # the signals, from exit_status.INTERRUPTED


def test_the_signal_row_names_each_signal_in_the_codes_order():
    (row,) = {m for s, m in exit_status_table().items() if s in exit_status.INTERRUPTED.values()}
    # INTERRUPTED is {"SIGINT": 130, "SIGTERM": 143}; the README says Ctrl-C for SIGINT.
    said = [row.index("Ctrl-C" if name == "SIGINT" else name) for name in exit_status.INTERRUPTED]
    assert said == sorted(said), row


def layout_entries() -> list[tuple[str, str]]:
    """(first column, text) of each entry of the README's layout block: an entry starts on a
    line that is not a continuation (more indented than the block)."""
    block = [line[4:] for line in section("Layout").splitlines() if line.startswith("    ")]
    assert block, "README's layout has no indented block"
    entries: list[list[str]] = []
    for line in block:
        if line.startswith(" "):
            entries[-1][1] += " " + line.strip()
        else:
            key, _, text = line.partition("  ")
            entries.append([key.strip(), text.strip()])
    return [(key, text) for key, text in entries]


def named_paths() -> set[str]:
    """Every file and folder the layout names, relative to the repository: modules (x.py)
    under their entry's folder, `python -m` modules, and the paths it spells out."""
    paths = set()
    for key, text in layout_entries():
        folder = key if re.fullmatch(r"[\w/]+/", key) else ""  # "transforms/storage/"
        words = f"{key} {text}"
        for module in re.findall(r"\bpython -m ([\w.]+)", words):
            paths.add(module.replace(".", "/"))  # a module file or a package, checked below
        words = re.sub(r"\bpython -m [\w.]+", "", words)
        for name in re.findall(r"(?<![\w/.])([\w.-]+\.py)\b", words):
            paths.add(folder + name)
        # a/b/ or a/b.ext (not prose such as "decode/resize"), x.sh, x.md, Dockerfile
        spelt = r"(?<![\w./])((?:[\w.-]+/)+(?:[\w.-]+\.\w+)?|[\w-]+\.(?:sh|md)|Dockerfile)(?![\w/])"
        paths.update(path.rstrip("/") for path in re.findall(spelt, words))
    return paths


def exists(path: str) -> bool:
    """A file or folder, or a module path (a/b for a/b.py or the package a/b/)."""
    here = ROOT / path
    return here.exists() or here.with_suffix(".py").is_file()


def test_every_path_the_layout_names_exists():
    paths = named_paths()
    # The parse found the entries, not nothing: a few the layout must name.
    assert {"pipeline/run.py", "transforms/storage/gcs.py", "Dockerfile", "samples"} <= paths
    missing = sorted(p for p in paths if not exists(p))
    assert not missing, f"README's layout names what is not in the tree: {missing}"


def test_every_module_path_in_the_readmes_text_exists():
    quoted = set(
        re.findall(r"`((?:pipeline|transforms|tests|benchmarks|scripts)/[\w/]+\.py)`", README)
    )
    assert "transforms/vocabulary.py" in quoted  # the search finds what the text names
    missing = sorted(p for p in quoted if not (ROOT / p).is_file())
    assert not missing, f"README names modules that do not exist: {missing}"


def test_every_module_of_the_command_is_in_the_layout():
    """pipeline/ and transforms/ modules (not __init__ or __main__): a new module is named
    where a newcomer reads the tree."""
    paths = named_paths()
    modules = sorted(
        str(p.relative_to(ROOT))
        for top in ("pipeline", "transforms")
        for p in (ROOT / top).rglob("*.py")
        if not p.name.startswith("__")
    )
    assert "transforms/done.py" in modules
    missing = [m for m in modules if m not in paths]
    assert not missing, f"README's layout does not name: {missing}"


def test_the_report_commands_the_readme_gives_are_the_venv_s():
    """Plain `python` on a fresh machine has no pyarrow (a traceback): the README runs the
    report with the set-up's Python, in its text and its command blocks."""
    text = README.replace(section("Layout"), "")
    given = re.findall(r"`([^`\n]*-m pipeline\.report[^`\n]*)`", text)
    given += re.findall(r"^    (\S[^\n]*-m pipeline\.report[^\n]*)$", text, re.M)
    assert len(given) >= 2, given
    wrong = [g for g in given if not g.startswith(".venv/bin/python -m pipeline.report ")]
    assert not wrong, f"README runs the report without the set-up's Python: {wrong}"


def reasons_table() -> dict[tuple[str, str], str]:
    """{(stage, reason): its "tried again" cell} from the README's table of error reasons."""
    text = section("What happens to bad input")
    header = next(line for line in text.splitlines() if line.startswith("| stage |"))
    columns = [cell.strip() for cell in header.strip().strip("|").split("|")]
    assert columns[:3] == ["stage", "reason", "tried again"], columns
    rows = {}
    for line in text.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("| `") and len(cells) >= 3:
            rows[(cells[0].strip("`"), cells[1].strip("`"))] = cells[2]
    return rows


def test_the_reasons_table_says_which_failures_are_tried_again_as_the_code_does():
    from transforms.vocabulary import FINAL, REASONS, RETRYABLE

    table = reasons_table()
    code = {(stage, reason) for stage, reasons in REASONS.items() for reason in reasons}
    assert set(table) == code, f"README and vocabulary differ: {set(table) ^ code}"
    for (_, reason), cell in table.items():
        assert cell == ("yes" if reason in RETRYABLE else "no"), (reason, cell)
    assert RETRYABLE and RETRYABLE.isdisjoint(FINAL)
    assert RETRYABLE | FINAL == {reason for _, reason in code}
