"""The report's data: a run's output read back (any filesystem) and every number the report
shows, as a Report; the command (cli.py) and its page (page.py) both read this. It counts the
current state: the latest row of each URI (latest_rows), with the rows in all beside it."""

from __future__ import annotations

import dataclasses
import re

import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.io.filesystems import FileSystems

from transforms.done import read_part_file
from transforms.rows import ERROR_SCHEMA, PREDICTION_SCHEMA
from transforms.storage.layout import part_files
from transforms.vocabulary import ERRORS, PREDICTIONS

DATE_IN_PATH = re.compile(r"/date=([^/]+)/[^/]+$")
TOP_LABELS = 20
SCHEMAS = {PREDICTIONS: PREDICTION_SCHEMA, ERRORS: ERROR_SCHEMA}
PREDICTION_COLUMNS = ["uri", "labels", "scores", "processed_at"]
ERROR_COLUMNS = ["uri", "stage", "reason", "processed_at"]


@dataclasses.dataclass
class Report:
    per_date: list[tuple[str, int, int]]  # date, labelled, failed
    top_labels: list[tuple[str, int, float]]  # label, images with it top-1, mean top-1 score
    reasons: list[tuple[str, str, int, str]]  # stage, reason, count, example uri
    top1_scores: list[float]
    sample: list[dict]  # uri, labels, scores (top-3)
    images: int = 0  # URIs counted: the latest row of each
    rows: int = 0  # rows in all, older rows of a URI (changed, labelled again) included


def read_kind(root: str, kind: str, date: str | None, columns: list[str]) -> pa.Table:
    """The kind's finished files for one date or all, with a 'date' column from the path;
    PartFileError naming a file that cannot be read."""
    pattern = part_files(root, kind, date or "*")
    tables = []
    for meta in FileSystems.match([pattern])[0].metadata_list:
        table = read_part_file(meta.path, columns)
        day = DATE_IN_PATH.search(meta.path)[1]
        tables.append(table.append_column("date", pa.array([day] * table.num_rows, pa.string())))
    if not tables:  # typed, so a date with only errors (or no errors) still adds up
        schema = SCHEMAS[kind]
        fields = [*(schema.field(c) for c in columns), pa.field("date", pa.string())]
        return pa.schema(fields).empty_table()
    return pa.concat_tables(tables)


def read_output(root: str, date: str | None) -> tuple[pa.Table, pa.Table]:
    """(predictions, errors) of one date or all, with the columns build_report needs."""
    return (
        read_kind(root, PREDICTIONS, date, PREDICTION_COLUMNS),
        read_kind(root, ERRORS, date, ERROR_COLUMNS),
    )


def latest_rows(predictions: pa.Table, errors: pa.Table) -> tuple[pa.Table, pa.Table]:
    """Pure: the latest row of each URI by processed_at, predictions and errors together (an
    image that failed after it was labelled counts as failed), each kind's rows in their
    order. The README's pyarrow query for the latest row per URI works the same way."""

    def keys(table: pa.Table, kind: int) -> pa.Table:
        n = table.num_rows
        return pa.table(
            {
                "uri": table["uri"].cast(pa.string()),
                "processed_at": table["processed_at"].cast(pa.timestamp("us", tz="UTC")),
                "kind": pa.array([kind] * n, pa.int8()),
                "row": pa.array(range(n), pa.int64()),
            }
        )

    newest = pa.concat_tables([keys(predictions, 0), keys(errors, 1)]).sort_by(
        [("processed_at", "descending")]
    )
    firsts = newest.group_by("uri", use_threads=False).aggregate(
        [("kind", "first"), ("row", "first")]
    )

    def kept(table: pa.Table, kind: int) -> pa.Table:
        rows = firsts.filter(pc.equal(firsts["kind_first"], kind))["row_first"]
        return table.take(rows.take(pc.sort_indices(rows)))

    return kept(predictions, 0), kept(errors, 1)


def build_report(predictions: pa.Table, errors: pa.Table, sample_size: int) -> Report:
    """Pure: the output's columns (uri, labels, scores, processed_at, date / uri, stage,
    reason, processed_at, date) -> every number the report shows, of the latest row of each
    URI (latest_rows), computed in Arrow so millions of rows stay cheap."""
    in_all = predictions.num_rows + errors.num_rows
    predictions, errors = latest_rows(predictions, errors)
    labelled = count_by(predictions, ["date"])
    failed = count_by(errors, ["date"])
    dates = sorted({d for (d,) in labelled} | {d for (d,) in failed})
    per_date = [(d, labelled.get((d,), 0), failed.get((d,), 0)) for d in dates]

    top1 = pa.table(
        {
            "label": pc.list_element(predictions["labels"], 0),
            "score": pc.list_element(predictions["scores"], 0),
        }
    )
    by_label = top1.group_by("label").aggregate([("score", "count"), ("score", "mean")])
    ranked = sorted(
        tuples(by_label, ["label", "score_count", "score_mean"]), key=lambda r: (-r[1], r[0])
    )
    by_reason = errors.group_by(["stage", "reason"]).aggregate([("uri", "count"), ("uri", "min")])
    reasons = sorted(
        tuples(by_reason, ["stage", "reason", "uri_count", "uri_min"]),
        key=lambda r: (-r[2], r[0], r[1]),
    )

    ordered = predictions.sort_by("uri")
    step = max(1, ordered.num_rows // sample_size) if sample_size else 0
    rows = pa.array(range(0, ordered.num_rows, step)[:sample_size] if step else [], pa.int64())
    picked = ordered.take(rows)
    sample = [
        {"uri": r["uri"], "labels": r["labels"][:3], "scores": r["scores"][:3]}
        for r in picked.to_pylist()
    ]
    return Report(
        per_date,
        ranked[:TOP_LABELS],
        reasons,
        top1["score"].to_pylist(),
        sample,
        images=predictions.num_rows + errors.num_rows,
        rows=in_all,
    )


def tuples(table: pa.Table, columns: list[str]) -> list[tuple]:
    return list(zip(*(table[c].to_pylist() for c in columns), strict=True))


def count_by(table: pa.Table, keys: list[str]) -> dict[tuple, int]:
    counted = table.group_by(keys).aggregate([([], "count_all")])
    return {row[:-1]: row[-1] for row in tuples(counted, [*keys, "count_all"])}
