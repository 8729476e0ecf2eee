from rs_trainer.generators.checks import check_generators, sample_ranges, write_served_model  # noqa: F401  (for trainer.py)
