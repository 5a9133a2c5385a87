"""Re-running is safe: after complete, crashed and repeated runs for one date, each input URI
is in that date's predictions or errors exactly once; local disk and gs:// alike."""

import signal

import pytest
from apache_beam.io.filesystems import FileSystems

from tests.gcs_proxy import Gate
from tests.runs import (
    cli,
    config_for,
    counter_values,
    output_files,
    read_rows,
    run_graph,
    signal_at_gate,
    storage_through_gate,
)
from transforms import metrics

pytestmark = pytest.mark.slow  # every test here runs the real command


@pytest.fixture(params=["local", "gcs"])
def images_and_output(request, tmp_path):
    """(images dict, output root) on local disk or on the GCS emulator."""
    if request.param == "local":
        return request.getfixturevalue("image_dir"), str(tmp_path / "out")
    images = request.getfixturevalue("gcs_images")
    return images, images["root"].rsplit("/", 1)[0] + "/out"


def all_uris(images) -> list[str]:
    return sorted([*images["good"], *images["patches"], *images["bad"]])


def labelled_uris(root: str) -> list[str]:
    return sorted(r["uri"] for r in read_rows(root, "predictions") + read_rows(root, "errors"))


def test_resume_repeat_and_crash_debris(images_and_output, probe_model, tmp_path):
    images, out = images_and_output
    everything = all_uris(images)
    first_half = everything[::2]
    manifest = tmp_path / "first_half.txt"
    manifest.write_text("\n".join(first_half) + "\n")

    def label(*inputs: str):
        config = config_for(
            *inputs,
            f"--output={out}",
            f"--model={probe_model}",
            "--max_error_ratio=0.5",  # the test folders hold 5 bad files of 35
            "--image_size=32",
            "--date=2025-03-04",
        )
        result, _, _ = run_graph(config)
        return config.run_id, counter_values(result)

    # Run 1 covers half the images; then a crashed run's debris lands where crashes leave it.
    first_run, _ = label(f"--input_manifest={manifest}")
    debris = FileSystems.join(out, "_temp", "20250304T000000-dead00-predictions", "half.parquet")
    with FileSystems.create(debris) as f:
        f.write(b"PAR1 a crashed run's half-written file")

    # Run 2 over everything labels only the other half.
    second_run, counts = label(f"--input={images['root']}/**")
    assert counts[metrics.IMAGES_SKIPPED] == len(first_half)
    assert counts[metrics.IMAGES_READ] == len(everything) - len(first_half)
    assert labelled_uris(out) == everything  # exactly once each
    rows = read_rows(out, "predictions") + read_rows(out, "errors")
    assert {r["uri"] for r in rows if r["run_id"] == first_run} == set(first_half)
    assert {r["run_id"] for r in rows} == {first_run, second_run}

    # Run 3, the same command again: nothing to do, nothing written.
    files_before = output_files(out, "predictions") + output_files(out, "errors")
    _, counts = label(f"--input={images['root']}/**")
    assert counts[metrics.IMAGES_SKIPPED] == len(everything)
    assert counts.get(metrics.IMAGES_READ, 0) == 0
    assert output_files(out, "predictions") + output_files(out, "errors") == files_before
    assert labelled_uris(out) == everything


def test_opting_out_labels_everything_again(image_dir, probe_model, tmp_path):
    args = [
        f"--input={image_dir['root']}/patch_*.png",
        f"--output={tmp_path}",
        f"--model={probe_model}",
        "--max_error_ratio=0.5",  # the test folders hold 5 bad files of 35
    ]
    for extra in ([], ["--skip_existing=false"]):
        run_graph(config_for(*args, "--image_size=32", "--date=2025-03-05", *extra))
    assert labelled_uris(str(tmp_path)) == sorted(list(image_dir["patches"]) * 2)


@pytest.mark.parametrize("where", ["local", "gcs"])
def test_rerun_after_a_run_killed_part_way(where, gcs, gcs_images, probe_model, tmp_path):
    """SIGKILL at a point the test holds the run at: with local output, while it waits on its
    20th image download; with gs:// output, while it uploads its first predictions file.
    Then the same command again."""
    images = gcs_images
    if where == "local":
        out, gate = str(tmp_path / "out"), Gate(20, "images/")
    else:
        out, gate = images["root"].rsplit("/", 1)[0] + "/out", Gate(1, "-predictions/", upload=True)
    args = [
        f"--input={images['root']}/**",
        f"--output={out}",
        f"--model={probe_model}",
        "--max_error_ratio=0.5",  # the test folders hold 5 bad files of 35
        "--image_size=64",
        "--batch_size=2",
        "--date=2025-03-06",
    ]
    with storage_through_gate(gcs.port, gate) as env:
        returncode, _ = signal_at_gate(args, gate, signal.SIGKILL, env)
        assert returncode == -signal.SIGKILL
        proc = cli(*args, env=env)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert labelled_uris(out) == all_uris(images)


def rewrite_with(tool: str, files: list[str], target: str) -> None:
    """The rows of `files` rewritten into one file by Polars (its strings as large_string,
    lz4, row groups of 2) or DuckDB (an extra column, zstd, row groups of 1)."""
    if tool == "polars":
        import polars as pl

        frame = pl.concat([pl.read_parquet(path) for path in files])
        frame.write_parquet(target, compression="lz4", row_group_size=2)
    else:
        import duckdb

        listed = ", ".join(f"'{path}'" for path in files)
        duckdb.sql(
            f"COPY (SELECT *, 'compacted' AS note FROM read_parquet([{listed}])) TO '{target}' "
            "(FORMAT parquet, COMPRESSION zstd, ROW_GROUP_SIZE 1)"
        )


@pytest.mark.parametrize("tool", ["polars", "duckdb"])
def test_partitions_other_tools_rewrote_are_output(tool, image_dir, probe_model, tmp_path):
    """Each partition compacted into one file by Polars or DuckDB, the job's files deleted:
    the same command finds everything done, labels nothing and writes nothing."""
    import pyarrow.parquet as pq

    out = tmp_path / "out"
    bad = sorted(image_dir["bad"])[0]
    inputs = [f"--input={image_dir['root']}/patch_*.png", f"--input={bad}"]
    args = [*inputs, f"--output={out}", f"--model={probe_model}", "--image_size=32"]
    args += ["--max_error_ratio=0.5", "--date=2025-03-04"]
    first = cli(*args)
    assert first.returncode == 0, first.stderr[-3000:]
    before = labelled_uris(str(out))
    assert len(before) == len(image_dir["patches"]) + 1
    for kind in ("predictions", "errors"):
        files = output_files(str(out), kind)
        target = str(out / kind / "date=2025-03-04" / "part-20250304T000000-00000a-c.parquet")
        rewrite_with(tool, files, target)
        for path in files:
            FileSystems.delete([path])
    uri_type = pq.ParquetFile(target).schema_arrow.field("uri").type
    assert str(uri_type) == ("large_string" if tool == "polars" else "string")
    rewritten = {kind: output_files(str(out), kind) for kind in ("predictions", "errors")}
    assert labelled_uris(str(out)) == before

    again = cli(*args)
    assert again.returncode == 0, again.stderr[-3000:]
    summary = again.stderr.strip().splitlines()[-1]
    assert summary.startswith(f"labelled 0 of 0 images, 0 failed, {len(before)} already in"), (
        summary
    )
    assert {kind: output_files(str(out), kind) for kind in rewritten} == rewritten
