"""The report tool, its own program beside the labelling command: python -m pipeline.report
ROOT reads a run's output and writes the numbers (data), the chart and the page (page)."""
