"""What is done (transforms/done.py): the skip policy from --skip_existing, and the join of
listed inputs with the output's rows, checked against plain Python written here."""

from transforms.done import (
    ALL_DATES,
    ANY_VERSION,
    SKIP_ALL,
    SKIP_DATE,
    SKIP_NONE,
    join,
    skip_policy,
)
from transforms.storage.listing import Listed


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
