from rs_trainer.generators.local import LocalGenerator, load_frozen, release  # noqa: F401  (re-export for trainer.py)
