"""A run in portions (pipeline/portions.py), without Beam: the spool gives back what was put
in, in order, a portion at a time; portions are sized by time from the measured rate."""

import os

from pipeline.portions import (
    FIRST_PORTION,
    MAX_PORTION,
    Spool,
    next_portion_size,
    portions,
    portions_needed,
)
from transforms.storage.listing import Listed


def test_the_spool_gives_back_every_work_unit_in_order_and_leaves_no_file():
    spool = Spool()
    works = [(Listed(f"/p/{i}\udcff.jpg", i, f"{i}:1"),) for i in range(250)]
    for work in works:
        spool.add(work)
    spool.seal()
    slices = [spool.take(100) for _ in range(3)]
    assert [len(s) for s in slices] == [100, 100, 50]
    got = [work for s in reversed(slices) for work in reversed(list(s.read()))]
    assert got[::-1] == works and spool.taken == spool.count == 250  # each slice on its own
    assert list(spool.take(5).read()) == []
    fd = slices[0].fd
    assert os.readlink(f"/proc/self/fd/{fd}").endswith("(deleted)")  # nothing to leave behind
    spool.close()


def test_a_portion_holds_target_seconds_at_the_last_rate_within_bounds():
    assert next_portion_size(100, 10.0, 60) == 600  # 10 a second for a minute
    assert next_portion_size(10, 100.0, 1) == FIRST_PORTION  # its fixed cost stays small
    assert next_portion_size(10**6, 1.0, 3600) == MAX_PORTION  # memory stays bounded
    assert next_portion_size(0, 0.0, 60) == FIRST_PORTION


def test_portions_follow_the_rate_the_clock_measures():
    spool = Spool()
    for i in range(1000):
        spool.add((Listed(f"/p/{i}"),))
    spool.seal()
    now = [0.0]
    sizes = []
    for portion in portions(spool, target_seconds=10, most=150, clock=lambda: now[0]):
        sizes.append(len(portion))
        now[0] += len(portion) / 20  # 20 work units a second
    spool.close()
    assert sizes[0] == FIRST_PORTION and sum(sizes) == 1000
    assert set(sizes[1:-1]) == {150}  # 10 s at 20 a second, at most 150
    assert sizes[-1] == 150 + 36  # what is left after it, too little for a portion, joins it


def test_plan_counts_the_portions_the_run_will_have():
    assert portions_needed(0, 0.01, 60) == 0
    assert portions_needed(FIRST_PORTION, 0.01, 60) == 1
    # 10,064 reads at 100 a second, 60 s portions: the first, then 10,000 in 6,000s.
    assert portions_needed(FIRST_PORTION + 10_000, 0.01, 60) == 1 + 2
