"""What is done (transforms/done.py): the skip policy from --skip_existing, and the join of
listed inputs with the output's rows, checked against plain Python written here; failures
tried again, and the error rows a prediction replaced leaving their files
(transforms/supersede.py)."""

import pathlib

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from transforms import supersede
from transforms.done import (
    ALL_DATES,
    ANY_VERSION,
    CHANGED,
    DONE,
    FINAL,
    NEW,
    RETRY,
    SKIP_ALL,
    SKIP_DATE,
    SKIP_NONE,
    done_otherwise,
    join,
    skip_policy,
    superseded_rows,
    verdict,
)
from transforms.storage.listing import Listed
from transforms.supersede import kept, replaced
from transforms.vocabulary import RETRYABLE


def test_the_policy_reads_what_each_value_of_skip_existing_says():
    assert skip_policy(SKIP_ALL, "2026-01-02").dates == ALL_DATES
    assert not skip_policy(SKIP_ALL, "2026-01-02").any_version
    assert skip_policy(SKIP_DATE, "2026-01-02").dates == "2026-01-02"
    assert skip_policy(SKIP_DATE, "2026-01-02").any_version
    assert skip_policy(SKIP_NONE, "2026-01-02").dates is None


def run_join(wanted, done, unique=False):
    works = []
    counts = join(wanted, done, "m1", works.append, unique=unique)
    return counts, works


def test_the_join_labels_each_wanted_uri_once_unless_done():
    a, b, c = Listed("/a", 1, "v1"), Listed("/b", 1, "v1"), Listed("/c", 1, "v2")
    done = {"/a": [("v1", "m1")], "/c": [("v1", "m1")], "/x": [ANY_VERSION]}
    counts, works = run_join([a, b, b, c, a], done)
    assert works == [(b,), (c,)]  # /a done; /b once; /c changed
    assert (counts.listed, counts.distinct, counts.done, counts.changed) == (5, 3, 1, 1)
    assert (counts.to_label, counts.to_read, counts.identical) == (2, 2, 0)


def test_inputs_of_identical_content_are_one_work_unit_in_uri_order():
    same = [Listed(f"gs://b/{n}", 5, "g1", "crc32c:AAAA") for n in "zyx"]
    other = Listed("gs://b/w", 5, "g1", "crc32c:BBBB")
    counts, works = run_join([*same, other], {})
    assert works == [tuple(sorted(same, key=lambda i: i.uri)), (other,)]
    assert (counts.to_label, counts.to_read, counts.identical) == (4, 2, 2)


def test_unique_listings_are_not_deduplicated_and_the_default_is_checked():
    # `unique` promises one listing: each URI once. A repeated URI then passes twice, so
    # only the default may be used where a URI can repeat.
    a = Listed("/a", 1, "v1")
    assert len(run_join([a, a], {}, unique=True)[1]) == 2
    assert len(run_join([a, a], {})[1]) == 1


def test_done_inputs_whose_rows_kept_other_labels_are_counted_not_labelled():
    a, b, c, d = (Listed(f"/{n}", 1, "v1") for n in "abcd")
    done = {
        "/a": [("v1", "m1", "top_k=3 L1")],  # another --top_k
        "/b": [("v1", "m1", "top_k=3 L1"), ("v1", "m1", "top_k=5 L1")],  # also the run's
        "/c": [("v1", "m1", None)],  # an error row, or one from before rows recorded it
        "/d": [("v0", "m1", "top_k=3 L1")],  # changed since: labelled again anyway
    }
    works = []
    counts = join([a, b, c, d], done, "m1", works.append, labelling="top_k=5 L1")
    assert (counts.done, counts.otherwise, counts.changed) == (3, 1, 1)
    assert works == [(d,)]
    assert done_otherwise(a, done["/a"], "m1", "top_k=5 L1")
    assert not done_otherwise(a, done["/a"], "m1", "top_k=3 L1")
    assert not done_otherwise(d, done["/d"], "m1", "top_k=5 L1")  # not done at all


# --- Failures tried again, and the rows a prediction replaces ------------------------------


def error(source, model, reason):
    """A done row as done_rows reads an error file's: no labelling, a reason."""
    return (source, model, None, reason)


def test_a_failure_that_may_pass_is_tried_again_until_max_attempts():
    item = Listed("/a.jpg", 10, "10:5")
    refused, broken = error("10:5", "m1", "no access"), error("10:5", "m1", "corrupt image")
    assert verdict(item, [refused], "m1") == FINAL  # the default: one attempt, never again
    assert verdict(item, [refused], "m1", max_attempts=3) == RETRY
    assert verdict(item, [refused, refused], "m1", max_attempts=3) == RETRY
    assert verdict(item, [refused] * 3, "m1", max_attempts=3) == FINAL
    assert verdict(item, [broken], "m1", max_attempts=3) == DONE  # content: final at once
    assert verdict(item, [error("10:5", "m1", "not found")], "m1", max_attempts=3) == DONE
    assert verdict(item, [refused, ("10:5", "m1", "top_k=5")], "m1", max_attempts=3) == DONE
    # Only the rows of this source and model version count as attempts.
    assert verdict(item, [error("10:4", "m1", "no access")], "m1", max_attempts=3) == CHANGED
    assert verdict(item, [error("10:5", "m0", "no access")], "m1", max_attempts=3) == NEW
    older = [error("10:4", "m1", "no access")] * 5
    assert verdict(item, [*older, refused], "m1", max_attempts=3) == RETRY
    for reason in RETRYABLE:
        assert verdict(item, [error("10:5", "m1", reason)], "m1", max_attempts=2) == RETRY


def test_the_join_counts_failures_tried_again_and_final_ones():
    a, b, c, d = (Listed(f"/{n}", 1, "v1") for n in "abcd")
    done = {
        "/a": [error("v1", "m1", "read failed")],  # tried again
        "/b": [error("v1", "m1", "model failed")] * 2,  # at the cap: final
        "/c": [error("v1", "m1", "empty file")],  # final at once
    }
    works = []
    counts = join([a, b, c, d], done, "m1", works.append, max_attempts=2)
    assert works == [(a,), (d,)]
    assert (counts.retried, counts.final, counts.done, counts.to_label) == (1, 1, 2, 2)
    assert counts.changed == 0 and counts.superseded == 0


def test_error_rows_a_prediction_replaced_are_found_by_version():
    prediction = ("v2", "m1", "top_k=5")
    rows = [error("v1", "m1", "no access"), error("v2", "m1", "no access"), prediction]
    assert superseded_rows("/a", rows) == 1  # v1's error row stays: another version
    assert superseded_rows("/a", [error("v2", "m1", "no access")]) == 0
    assert superseded_rows("/a", [error(None, None, "read failed"), prediction]) == 1
    done = {"/a": rows, "/b": [prediction, error("v2", "m1", "model failed")] * 2}
    counts = join([], done, "m1", lambda work: None)
    assert counts.superseded == 3


def test_which_rows_of_an_error_file_stay():
    predicted = {"/a": [("v2", "m1")], "/old": [(None, None)]}
    errors = [("/a", "v1", "m1"), ("/a", "v2", "m1"), ("/a", "v2", "m0"), ("/b", "v2", "m1")]
    assert kept(errors, predicted) == [True, False, True, True]
    assert replaced(("/old", "v9", "m9"), predicted)  # a prediction from before versions
    assert replaced(("/a", None, "m1"), predicted)  # an error row from before versions


def write_rows(path: pathlib.Path, schema: pa.Schema, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)


def test_the_rewrite_keeps_whole_files_and_a_crash_is_finished_by_the_next_run(
    tmp_path, monkeypatch
):
    """Real files, no Beam: day 1's error file holds a row a prediction of day 2 replaced and
    one still failing; another holds only replaced rows. A first cleanup killed between
    staging a file and putting it in place (replace_file raising) leaves the originals whole;
    the next one removes the rows, deletes the emptied file and leaves no staged copy."""
    from transforms.rows import ERROR_SCHEMA, PREDICTION_SCHEMA, error_row

    root = tmp_path / "out"
    day1 = root / "errors" / "date=2026-11-01"

    def failed(uri, reason):
        return {**error_row(uri, "read", reason, "PermissionError", "v1"), "model_version": "m1"}

    mixed, only = day1 / "part-A-00000-of-00001.parquet", day1 / "part-B-00000-of-00001.parquet"
    write_rows(mixed, ERROR_SCHEMA, [failed("/a", "no access"), failed("/b", "no access")])
    write_rows(only, ERROR_SCHEMA, [failed("/c", "model failed")])
    prediction = {"uri": "", "source_version": "v1", "model_version": "m1"}
    write_rows(
        root / "predictions" / "date=2026-11-02" / "part-C-00000-of-00001.parquet",
        PREDICTION_SCHEMA,
        [{**prediction, "uri": "/a"}, {**prediction, "uri": "/c"}],
    )
    original = mixed.read_bytes()

    def killed(staged, path):
        raise KeyboardInterrupt("killed before the rename")

    monkeypatch.setattr(supersede, "replace_file", killed)
    with pytest.raises(KeyboardInterrupt):
        supersede.remove_replaced(str(root), ALL_DATES, "run1")
    monkeypatch.undo()
    assert mixed.read_bytes() == original  # untouched, whole
    assert list((root / "_temp").rglob("*.parquet")), "the staged copy is where it was left"

    removed = supersede.remove_replaced(str(root), ALL_DATES, "run2")
    assert (removed.rows, removed.rewritten, removed.deleted) == (2, 1, 1)
    assert sorted(p.name for p in day1.iterdir()) == [mixed.name]
    assert pq.read_table(mixed).column("uri").to_pylist() == ["/b"]
    assert pq.read_table(mixed).schema == ERROR_SCHEMA
    assert not (root / "_temp" / "run2-supersede").exists()
    assert supersede.remove_replaced(str(root), ALL_DATES, "run3").rows == 0
