"""The old path of `rs_trainer.generators`, kept only for the names rs_trainer/trainer.py still imports from it.
Remove this folder once the trainer imports `rs_trainer.generators` (issue 22)."""
