"""Counters every stage reports into, under one namespace (RunInference's own metrics too)."""

from apache_beam.metrics import Metrics

NAMESPACE = "image_labeler"

# Stage names used in error rows and in the failed_<stage> counters.
STAGES = ("read", "decode", "inference")

images_read = Metrics.counter(NAMESPACE, "images_read")
images_skipped = Metrics.counter(NAMESPACE, "images_skipped")  # already in the output
images_labelled = Metrics.counter(NAMESPACE, "images_labelled")
failed = {stage: Metrics.counter(NAMESPACE, f"failed_{stage}") for stage in STAGES}
