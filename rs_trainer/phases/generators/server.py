from rs_trainer.generators.server import ManagedServer  # noqa: F401  (re-export for trainer.py)
