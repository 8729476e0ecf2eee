"""What a run stands on: data, models, files (`layout`, `io`), resume, seeds, metrics, the report and progress
bars."""
