"""The pipeline's shape: list -> skip what is done -> read+decode -> RunInference -> top-k ->
Parquet, with errors flowing beside it into their own partition."""

from __future__ import annotations

import dataclasses

import apache_beam as beam
from apache_beam.ml.inference.base import KeyedModelHandler, RunInference

from pipeline.config import Config
from transforms.feed import ReadAndDecode
from transforms.inputs import KeepNew, ListInputs
from transforms.models.handler import ImageClassifierHandler
from transforms.output import ExistingUris, WritePartition
from transforms.postprocess import ToPredictionRow, failed_batch_rows
from transforms.rows import ERROR_SCHEMA, PREDICTION_SCHEMA
from transforms.vocabulary import ERRORS, PREDICTIONS


@dataclasses.dataclass
class LabelOutputs:
    predictions: beam.PCollection
    errors: beam.PCollection


def model_handler(config: Config) -> KeyedModelHandler:
    return KeyedModelHandler(
        ImageClassifierHandler(
            config.model,
            image_size=config.image_size,
            batch_size=config.batch_size,
            num_classes=len(config.labels),
            require_gpu=config.require_gpu,
        )
    )


def build_pipeline(pipeline: beam.Pipeline, config: Config) -> LabelOutputs:
    wanted = pipeline | "ListInputs" >> ListInputs(config.inputs, config.manifest, config.output)
    if config.skip_existing:
        done = pipeline | "ExistingOutput" >> ExistingUris(config.output, config.date)
    else:
        done = pipeline | "NothingDone" >> beam.Create([]).with_output_types(str)
    # The reshuffle (strings only) ends the stage here: every new URI is counted, so the
    # progress total is known, and spread over workers before the first image is read.
    uris = (wanted, done) | "KeepNew" >> KeepNew() | "Spread" >> beam.Reshuffle()
    decoded = uris | "ReadAndDecode" >> beam.ParDo(
        ReadAndDecode(
            config.image_size,
            read_concurrency=config.read_concurrency,
            max_inflight_bytes=config.max_inflight_bytes,
            max_object_bytes=config.max_object_bytes,
        )
    ).with_outputs(ERRORS, main="images")
    inferred, dead_letters = (
        decoded.images
        | "RunInference" >> RunInference(model_handler(config)).with_exception_handling()
    )
    predictions = inferred | "TopK" >> beam.ParDo(
        ToPredictionRow(config.labels, config.top_k, config.model)
    )
    inference_errors = dead_letters.failed_inferences | "FailedBatches" >> beam.FlatMap(
        failed_batch_rows
    )
    errors = (decoded[ERRORS], inference_errors) | "AllErrors" >> beam.Flatten()

    def write(kind, schema):
        return WritePartition(config.output, kind, config.date, config.run_id, schema)

    _ = predictions | "WritePredictions" >> write(PREDICTIONS, PREDICTION_SCHEMA)
    _ = errors | "WriteErrors" >> write(ERRORS, ERROR_SCHEMA)
    return LabelOutputs(predictions, errors)
