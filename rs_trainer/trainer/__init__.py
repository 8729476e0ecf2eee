"""`RejectionSamplingTrainer` (trainer/loop.py) over its collaborators, each in its own file:

- setup.py: `RunInputs` (prompts, token ids, tokenizer, scoring, generators) and `Policy` (model, optimizer), checked
  and loaded before anything is written;
- sampler.py: a round's samples (generation, the temperature probe, selection, STaR rationalization);
- serving.py: each generator opened for a round and released after it, and the round's sampling values;
- learner.py: SFT, drift, held-out evaluation and checkpoints;
- records.py: what a round writes (scored rows, SFT set, metrics, report);

None of them calls back into the trainer.
"""

from rs_trainer.trainer.loop import RejectionSamplingTrainer

__all__ = ["RejectionSamplingTrainer"]
