"""The pipeline's stages: list inputs, decode, infer, post-process, write."""
