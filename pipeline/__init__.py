"""beam-image-labeler: options, graph and entry point of the labelling pipeline."""
