"""The recipe keys of selection, drift, SFT and saving, each field's facts in its metadata
(`rs_trainer.config.checks.key`). `selection`'s choices are the rules of `rs_trainer.phases.selection.RULES`."""

from __future__ import annotations

from dataclasses import dataclass, field

from rs_trainer.config.checks import Range, key
from rs_trainer.phases.filters import DEDUPE_MODES
from rs_trainer.phases.selection import RULES


@dataclass
class SelectionKeys:
    """Selection and filters: which samples SFT trains on."""

    selection: str = field(
        default="best_of_n",
        metadata=key("The rule that keeps samples (`rs_trainer.phases.selection.RULES`).", choices=tuple(RULES)),
    )
    selection_top_k: int | None = field(
        default=None,
        metadata=key("`selection: top_k`: samples kept over all prompts.", range=Range(1, note=" (the samples kept)")),
    )
    top_fraction: float | None = field(
        default=None,
        metadata=key(
            "`top_fraction`: fraction of all samples kept.",
            range=Range(0, 1, open_low=True, note=" (a fraction of all samples)"),
        ),
    )
    k_per_prompt: int = field(
        default=1, metadata=key("`top_k_per_prompt` and `rso`: samples kept per prompt.", range=Range(1))
    )
    max_per_prompt: int | None = field(
        default=None,
        metadata=key(
            "`threshold` and `percentile`: keep at most this many (the best) per prompt; default all.",
            range=Range(1, fix="; or leave it unset to keep all"),
        ),
    )
    reward_percentile: list[float] = field(
        default_factory=lambda: [50.0],
        metadata=key(
            "`percentile`: keep samples at or above their own prompt's q-th reward percentile (0..100), best "
            "first; a list rises per round (ReST's Improve steps), the last value repeats.",
            range=Range(0, 100),
            per_round=True,
        ),
    )
    rso_beta: list[float] = field(
        default_factory=lambda: [0.5],
        metadata=key(
            "`rso`: β of statistical rejection sampling toward π·exp(r/β) (RSO), per round; small β tends to "
            "best-of-N, large β to a uniform draw. Keeps up to `k_per_prompt` per prompt.",
            range=Range(0, open_low=True, fix="; small β approaches best-of-N"),
            per_round=True,
        ),
    )
    reward_threshold: float | None = field(
        default=None, metadata=key("`threshold`: keep samples with reward >= this.", range=Range())
    )
    min_reward: float | None = field(
        default=None, metadata=key("Never select a sample below this reward, whatever the strategy.", range=Range())
    )
    drop_truncated: bool = field(
        default=False, metadata=key("Never select a truncated (no end token) or empty completion.")
    )
    dedupe: str | None = field(
        default=None,
        metadata=key(
            "`exact` or `normalised` (whitespace and case ignored): keep one copy, the lowest sample_index, "
            "of each repeated completion of a prompt before selecting; default off.",
            choices=DEDUPE_MODES,
            yaml_booleans={False: None},
        ),
    )
    drop_constant_prompts: bool = field(
        default=False,
        metadata=key("Skip prompts whose samples all have the same reward: nothing to learn from them."),
    )
    min_reward_margin: float | None = field(
        default=None,
        metadata=key("Skip prompts whose best reward beats their median reward by less than this.", range=Range(0)),
    )
    prefer_shorter: bool = field(
        default=True, metadata=key("Among equal rewards prefer the shorter completion (then a seeded draw).")
    )
    matched_random: bool = field(
        default=False,
        metadata=key(
            "The recipe's own control: per prompt, keep exactly as many samples as `selection` would, drawn "
            "at random (seeded) among the same candidates after the same filters, whatever their reward."
        ),
    )
    candidate_models: list[str] = field(
        default_factory=list,
        metadata=key(
            "best_of_n only: more models (hub ids, local folders or `embedded:<name>`) that each sample N "
            "completions per prompt and compete with `model_name_or_path`; ignored by training."
        ),
    )


@dataclass
class RationalizationKeys:
    """STaR rationalization."""

    rationalize: bool = field(
        default=False,
        metadata=key(
            "STaR rationalization: for prompts where none of the round's samples passes, sample again with "
            "the ground truth given as a hint (`rationalization_hint`), keep the best completion that passes, and "
            "train on it without the hint. Rows are marked `rationalized: true`."
        ),
    )
    rationalization_hint: str = field(
        default="\n(Hint: the answer is {answer}.)",
        metadata=key(
            "Appended to the prompt's last user message when rationalizing; `{column}` names a dataset "
            "column holding the ground truth."
        ),
    )
    rationalization_samples: int = field(
        default=4,
        metadata=key("Samples per failed prompt when rationalizing (the policy, in-process).", range=Range(1)),
    )


@dataclass
class DriftKeys:
    """Drift: KL to the base model and entropy."""

    kl_to_base: str = field(
        default="auto",
        metadata=key(
            "KL(π‖π_ref) and entropy of the policy's own samples each round (`rs/kl_ref`, `rs/entropy`): "
            "`auto` with LoRA (π_ref: the adapter disabled, no second copy), `on` also without LoRA (keeps a frozen "
            "copy of the base model), `off`.",
            choices=("auto", "on", "off"),
            yaml_booleans={True: "on", False: "off"},
        ),
    )
    kl_samples: int = field(
        default=128,
        metadata=key(
            "KL and entropy are estimated on a seeded draw of at most this many of the round's policy "
            "samples (0: all). Two forward passes over every sample cost more than sampling them did.",
            range=Range(0, note=" (0: every sample)"),
        ),
    )
    max_kl: float | None = field(
        default=None,
        metadata=key(
            "When a round's `rs/kl_ref` passes this, `max_kl_action` happens.",
            range=Range(0, open_low=True, fix="; or leave it unset"),
        ),
    )
    max_kl_action: str = field(
        default="warn",
        metadata=key("`warn`, or `stop`: end the run before that round's SFT.", choices=("warn", "stop")),
    )


@dataclass
class SFTKeys:
    """SFT: the instruction-tuning step of each round."""

    num_train_epochs: int = field(default=2, metadata=key("Epochs over the selected set each round.", range=Range(1)))
    learning_rate: float = field(
        default=2e-4,
        metadata=key("Peak learning rate of AdamW.", range=Range(0, open_low=True, fix="; 2e-4 is usual with LoRA")),
    )
    lr_scheduler_type: str = field(default="constant_with_warmup", metadata=key("transformers scheduler name."))
    warmup_ratio: float = field(
        default=0.0,
        metadata=key(
            "Fraction of a round's steps spent warming up.",
            range=Range(0, 1, note=" (a fraction of each round's steps)"),
        ),
    )
    weight_decay: float = field(default=0.0, metadata=key("AdamW weight decay.", range=Range(0)))
    max_grad_norm: float = field(
        default=1.0, metadata=key("Gradient clipping norm; 0 = off.", range=Range(0, note=" (0 turns clipping off)"))
    )
    per_device_train_batch_size: int = field(
        default=8, metadata=key("SFT sequences per device per step.", range=Range(1))
    )
    gradient_accumulation_steps: int = field(
        default=1, metadata=key("Micro-batches per optimizer step.", range=Range(1))
    )
    max_length: int | None = field(
        default=None,
        metadata=key(
            "Longest prompt + completion trained on; default: the model's context.",
            range=Range(2, fix="; or leave it unset to use the model's context"),
        ),
    )
    gradient_checkpointing: bool = field(
        default=False,
        metadata=key(
            "Recompute activations in the backward pass (transformers' gradient checkpointing).", semantic=False
        ),
    )
    pool_previous_rounds: bool = field(
        default=False, metadata=key("SFT on the selected samples of this and every earlier round (Llama 2).")
    )
    sft_from: str = field(
        default="previous",
        metadata=key(
            "`previous`: continue from last round's weights; `base`: restart each round (ReST-EM).",
            choices=("previous", "base"),
        ),
    )


@dataclass
class SavingKeys:
    """Evaluation, trackers and saving."""

    eval_max_new_tokens: int = field(
        default=48, metadata=key("Greedy evaluation's completion length cap.", range=Range(1))
    )
    report_to: list[str] = field(
        default_factory=lambda: ["tensorboard"],
        metadata=key(
            "Trackers, as in TRL: tensorboard (under output_dir/rs_trainer/), wandb, all, or none.", semantic=False
        ),
    )
    save_checkpoints: bool = field(default=True, metadata=key("Save the model or adapter after every round."))
    run_name: str | None = field(
        default=None,
        metadata=key("The run's name in the trackers (TRL's key); default the output_dir's name.", semantic=False),
    )
    push_to_hub: bool = field(
        default=False,
        metadata=key(
            "At the end of the run, write the last round's policy, its adapter merged, with a model card to "
            "output_dir/merged and upload it to `hub_model_id` (TRL's keys; `rs-trainer export model` does it later).",
            semantic=False,
        ),
    )
    hub_model_id: str | None = field(
        default=None, metadata=key("The Hub repository `push_to_hub` uploads to, e.g. org/name.", semantic=False)
    )
    hub_private_repo: bool = field(
        default=False, metadata=key("Create the `hub_model_id` repository private.", semantic=False)
    )


@dataclass
class ProcessKeys:
    """Several processes."""

    ddp_timeout: int = field(
        default=10800,
        metadata=key(
            "Seconds a collective may wait before the job aborts (the process group's timeout; TRL and "
            "transformers' name). Ranks wait for the slowest one's generation, for rank 0 writing the served model "
            "and starting a server, and for checkpoint writes: the default is 3 hours, against NCCL's 10 minutes.",
            range=Range(1, note=" (seconds)", fix="; 10800 is 3 h"),
            semantic=False,
        ),
    )
