"""Offline pipelines on a run's outputs: Best-of-N at inference time, reward-model training and the DPO and SFT
exporters. Their commands live in `rs_trainer.cli`."""
