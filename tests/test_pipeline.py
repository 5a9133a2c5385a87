"""The Beam graph end to end on TestPipeline: outputs, dead letters, metrics, Parquet files."""

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from pipeline.graph import build_pipeline
from tests.images import patch_image
from tests.runs import config_for, counter_values, run_graph
from tests.savedmodels import expected_probe_logits, probe_class
from transforms import metrics
from transforms.postprocess import top_k


def test_every_uri_lands_exactly_once(image_dir, probe_model, probe_labels, tmp_path):
    root = image_dir["root"]
    missing = str(root / "vanished.jpg")
    manifest = tmp_path / "manifest.txt"
    # Overlaps the glob on purpose (and names one file twice, once relatively).
    listed = image_dir["good"][:4] + [image_dir["good"][0], missing]
    manifest.write_text("# a comment\n\n" + "\n".join(listed) + "\n")
    config = config_for(
        f"--input={root}/**",
        f"--input={root}/*.jpg",
        f"--input_manifest={manifest}",
        f"--output={tmp_path / 'out'}",
        f"--model={probe_model}",
        f"--labels_file={probe_labels}",
        "--image_size=64",
        "--batch_size=4",
        "--date=2024-03-01",
    )
    result, predictions, errors = run_graph(config)

    expected_good = set(image_dir["good"]) | set(image_dir["patches"])
    expected_bad = set(image_dir["bad"]) | {missing}
    predicted = [r["uri"] for r in predictions]
    failed = [r["uri"] for r in errors]
    assert len(predicted) == len(set(predicted)) and len(failed) == len(set(failed))
    assert set(predicted) == expected_good
    assert set(failed) == expected_bad

    by_uri = {r["uri"]: r for r in errors}
    assert by_uri[missing]["stage"] == "read"
    assert "FileNotFoundError" in by_uri[missing]["error"] or "No such" in by_uri[missing]["error"]
    for uri, reason in image_dir["bad"].items():
        assert by_uri[uri]["stage"] == "decode"
        assert reason in by_uri[uri]["error"]
        assert by_uri[uri]["error"].startswith("DecodeError: ")
    assert {r["date"] for r in predictions + errors} == {"2024-03-01"}

    counts = counter_values(result)
    assert counts[metrics.IMAGES_READ] == len(expected_good) + len(expected_bad)
    assert counts[metrics.IMAGES_LABELLED] == len(expected_good)
    assert counts[metrics.failed_name("read")] == 1
    assert counts[metrics.failed_name("decode")] == len(image_dir["bad"])
    assert counts.get(metrics.failed_name("inference"), 0) == 0
    assert counts["num_inferences"] == len(expected_good)  # RunInference's own, same namespace


def test_predictions_follow_the_pixels(image_dir, probe_model, probe_labels, tmp_path):
    config = config_for(
        f"--input={image_dir['root']}/patch_*.png",
        f"--output={tmp_path / 'out'}",
        f"--model={probe_model}",
        f"--labels_file={probe_labels}",
        "--image_size=64",
        "--top_k=3",
    )
    _, predictions, errors = run_graph(config)
    assert errors == []
    assert len(predictions) == len(image_dir["patches"])
    for row in predictions:
        r, c, ch = image_dir["patches"][row["uri"]]
        assert row["class_ids"][0] == probe_class(r, c, ch)
        assert row["labels"][0] == f"r{r}c{c}-{'RGB'[ch]}"
        (best,) = top_k(expected_probe_logits(patch_image(64, r, c, ch))[None], 3)
        assert row["class_ids"] == best.class_ids
        np.testing.assert_allclose(row["scores"], best.scores, rtol=1e-4)
        assert row["model"] == probe_model


def test_assert_that_on_the_graph_outputs(image_dir, probe_model, tmp_path):
    """The same graph checked inside the pipeline with assert_that."""
    patches = sorted(image_dir["patches"])[:3]
    manifest = tmp_path / "m.txt"
    manifest.write_text("\n".join(patches + [str(image_dir["root"] / "empty.jpg")]))
    config = config_for(
        f"--input_manifest={manifest}",
        f"--output={tmp_path / 'out'}",
        f"--model={probe_model}",
        "--image_size=32",
    )
    with TestPipeline(runner="DirectRunner") as pipeline:
        outputs = build_pipeline(pipeline, config)
        assert_that(
            outputs.predictions | beam.Map(lambda r: (r["uri"], len(r["labels"]))),
            equal_to([(p, 5) for p in patches]),
            label="predictions",
        )
        assert_that(
            outputs.errors | beam.Map(lambda r: (r["uri"], r["stage"])),
            equal_to([(str(image_dir["root"] / "empty.jpg"), "decode")]),
            label="errors",
        )


def test_failed_inference_batches_become_error_rows(image_dir, failing_model, tmp_path):
    from PIL import Image

    from tests.images import encode

    black = image_dir["root"] / "black.png"
    black.write_bytes(encode(Image.new("RGB", (32, 32)), "PNG"))
    others = sorted(image_dir["patches"])[:3]
    manifest = tmp_path / "m.txt"
    manifest.write_text("\n".join(others + [str(black)]))
    config = config_for(
        f"--input_manifest={manifest}",
        f"--output={tmp_path / 'out'}",
        f"--model={failing_model}",
        "--image_size=32",
        "--batch_size=1",
    )
    result, predictions, errors = run_graph(config)
    assert {r["uri"] for r in predictions} == set(others)
    assert [(r["uri"], r["stage"]) for r in errors] == [(str(black), "inference")]
    assert "black image in batch" in errors[0]["error"]
    assert counter_values(result)[metrics.failed_name("inference")] == 1


@pytest.mark.parametrize("kind", ["csv", "parquet"])
def test_tabular_manifests(kind, image_dir, probe_model, tmp_path):
    import pyarrow as pa
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    uris = sorted(image_dir["patches"])[:4]
    table = pa.table({"id": list(range(4)), "uri": uris})
    path = tmp_path / f"manifest.{kind}"
    (pcsv.write_csv if kind == "csv" else pq.write_table)(table, str(path))
    config = config_for(
        f"--input_manifest={path}",
        f"--output={tmp_path / 'out'}",
        f"--model={probe_model}",
        "--image_size=32",
    )
    _, predictions, errors = run_graph(config)
    assert sorted(r["uri"] for r in predictions) == uris and errors == []
