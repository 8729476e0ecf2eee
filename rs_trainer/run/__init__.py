"""What a run stands on: data, models, files (`layout`, `io`), resume, seeds, TRL's row `formats`, metrics, the
report and progress bars."""
