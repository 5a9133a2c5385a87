"""The model, below the stages: which SavedModel a --model value names and whether it is usable
(catalog), the RunInference handler (handler), class names (labels), the built-in Lite0."""
