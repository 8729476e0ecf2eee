"""The phases of a round, pure functions of their inputs (no Accelerator, no network): in-process decoding
(`generation`), the filters and selection strategies, `temperature: auto` and the best-of-n `estimators`, STaR's
hinted prompts (`rationalization`), the SFT loss, and KL and entropy (`divergence`). Where samples come from
beyond this process is `rs_trainer.generators`."""
