"""python -m pipeline.report: the report tool's entry (cli.main)."""

from pipeline.report.cli import main

main()
