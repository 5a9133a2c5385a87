"""The command's exit statuses, defined once (the summary decides which; --help and the README
list them)."""

from __future__ import annotations

OK, BAD_OPTION, TOO_MANY_ERRORS, OUTPUT_LOST = 0, 2, 3, 4
INTERRUPTED = {"SIGINT": 130, "SIGTERM": 143}

MEANINGS = {
    OK: "done",
    BAD_OPTION: "a bad option",
    TOO_MANY_ERRORS: "too many images failed",
    OUTPUT_LOST: "output not written",
}


def describe() -> str:
    """'0 done, 2 a bad option, ..., 130/143 interrupted' for --help."""
    codes = [f"{code} {meaning}" for code, meaning in MEANINGS.items()]
    return ", ".join([*codes, "/".join(map(str, INTERRUPTED.values())) + " interrupted"])
