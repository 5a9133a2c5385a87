"""The pipeline's Beam stages, in order: inputs (list and skip), feed (read + decode ahead of
the model, pure image work in images), RunInference (models/), postprocess, output; rows,
vocabulary and metrics are their shared words. Below them: storage/ and models/."""
