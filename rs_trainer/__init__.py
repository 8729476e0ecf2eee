"""rs_trainer: rejection-sampling fine-tuning on Accelerate, TRL and PEFT."""

from rs_trainer.config import RSConfig
from rs_trainer.errors import ConfigError

__all__ = ["ConfigError", "RSConfig", "RejectionSamplingTrainer"]
__version__ = "0.1.0"


def __getattr__(name):
    # The trainer pulls in torch and accelerate; import it only when asked for.
    if name == "RejectionSamplingTrainer":
        from rs_trainer.trainer import RejectionSamplingTrainer

        return RejectionSamplingTrainer
    raise AttributeError(name)
