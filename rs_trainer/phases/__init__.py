"""The phases of a round, each pure: where samples come from (`generation`, `generators`), the filters and
selection strategies, `temperature: auto`, the SFT loss, and KL and entropy (`divergence`)."""
