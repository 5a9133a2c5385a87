"""The pipeline's shape: list -> skip what is done -> read+decode -> RunInference -> top-k ->
Parquet, with errors flowing beside it into their own partition."""

from __future__ import annotations

import dataclasses

import apache_beam as beam
from apache_beam.ml.inference.base import KeyedModelHandler, RunInference

from pipeline.config import Config
from transforms.done import ExistingRows, KeepNew
from transforms.feed import ReadAndDecode
from transforms.inputs import ListInputs
from transforms.models.handler import ImageClassifierHandler
from transforms.output import WRITE_STEPS, WritePartition
from transforms.postprocess import ToPredictionRow, failed_batch_rows
from transforms.rows import (
    ERROR_SCHEMA,
    LABELLING,
    MODEL_VERSION,
    PREDICTION_SCHEMA,
    PREPROCESS,
)
from transforms.vocabulary import ERRORS, PREDICTIONS


@dataclasses.dataclass
class LabelOutputs:
    predictions: beam.PCollection
    errors: beam.PCollection


@dataclasses.dataclass(frozen=True)
class Portion:
    """One portion of a run in portions: where its job gets its work units, and the id its
    files are named by (the run's id and the portion's number: each file says its run)."""

    source: beam.PTransform
    run_id: str


def select_work(pipeline: beam.Pipeline, config: Config) -> beam.PCollection:
    """The inputs listed, less what the output holds (transforms/done.py) -> work units.
    KeepNew ends with a shuffle (of URIs and versions only): every new input is counted, so
    the progress total is known, and spread over workers before the first image is read."""
    wanted = pipeline | "ListInputs" >> ListInputs(
        config.inputs,
        config.manifest,
        config.output,
        config.storage_options,
        config.manifest_stream,
    )
    done = pipeline | "ExistingOutput" >> ExistingRows(config.output, config.skip)
    return (wanted, done) | "KeepNew" >> KeepNew(
        config.model_version, config.labelling, config.max_attempts
    )


def model_handler(config: Config) -> KeyedModelHandler:
    return KeyedModelHandler(classifier(config))


def classifier(config: Config) -> ImageClassifierHandler:
    """The run's model handler, each image's top k found with its batch (RunInference keys it
    by work unit; --plan times it bare)."""
    return ImageClassifierHandler(
        config.model,
        image_size=config.image_size,
        batch_size=config.batch_size,
        num_classes=len(config.labels),
        require_gpu=config.require_gpu,
        top_k=config.top_k,
    )


def build_pipeline(
    pipeline: beam.Pipeline, config: Config, portion: Portion | None = None
) -> LabelOutputs:
    """The whole run as one job, or with `portion` one portion of a run in portions
    (pipeline/portions.py: the listing and the skip were done by the driver)."""
    if portion is None:
        work = select_work(pipeline, config)
    else:
        work = pipeline | "Portion" >> portion.source
    run_id = config.run_id if portion is None else portion.run_id
    decoded = work | "ReadAndDecode" >> beam.ParDo(
        ReadAndDecode(
            config.image_size,
            read_concurrency=config.read_concurrency,
            max_inflight_bytes=config.max_inflight_bytes,
            max_object_bytes=config.max_object_bytes,
            storage_options=config.storage_options,
        )
    ).with_outputs(ERRORS, main="images")
    inferred, dead_letters = (
        decoded.images
        | "RunInference" >> RunInference(model_handler(config)).with_exception_handling()
    )
    scored = inferred | "TopK" >> beam.ParDo(
        ToPredictionRow(config.labels, config.model)
    ).with_outputs(ERRORS, main="predictions")
    predictions = scored.predictions
    inference_errors = dead_letters.failed_inferences | "FailedBatches" >> beam.FlatMap(
        failed_batch_rows
    )
    errors = (decoded[ERRORS], scored[ERRORS], inference_errors) | "AllErrors" >> beam.Flatten()

    # Each kind's schema keeps the columns it has (errors have no labelling).
    stamp = {
        MODEL_VERSION: config.model_version,
        PREPROCESS: config.preprocess,
        LABELLING: config.labelling,
    }

    def write(kind, schema):
        return WritePartition(config.output, kind, config.date, run_id, schema, stamp)

    _ = predictions | WRITE_STEPS[PREDICTIONS] >> write(PREDICTIONS, PREDICTION_SCHEMA)
    _ = errors | WRITE_STEPS[ERRORS] >> write(ERRORS, ERROR_SCHEMA)
    return LabelOutputs(predictions, errors)
