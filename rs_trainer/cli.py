"""Every command of the project, and their one error wrapper (`run_command`). `main` dispatches on the first word,
as `trl <command>` does; anything else is training, so `accelerate launch -m rs_trainer --config ...` needs no word:

- `accelerate launch -m rs_trainer [train] --config recipes/<model>/<recipe>.yaml [--key value ...]` (`train_main`);
- `rs-trainer best-of-n --config <recipe>` (`best_of_n_main`);
- `rs-trainer reward-model --config <recipe>` (`reward_training_main`);
- `rs-trainer export {dpo,sft,model} --output_dir <run> --out <file or folder>`, `rs-trainer export html
  --output_dir <run>` (`export_main`).

`rs-trainer ...` and `python -m rs_trainer ...` are the same command.

Recipes and overrides are parsed by `trl.TrlParser` into `RSConfig` and TRL's `ModelConfig`; a key that neither
knows is refused with its name. The library modules hold no argument parsing and no exit codes.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable

from rs_trainer.config import RSConfig, check_model_args, check_peft_keys
from rs_trainer.errors import ConfigError, GeneratorError, UploadError, first_line
from rs_trainer.run.console import quiet_console, quiet_loading_bars
from rs_trainer.run.io import is_disk_full
from rs_trainer.run.ranks import lost_peer


def parse_args(argv: list[str] | None = None):
    from trl import ModelConfig, TrlParser

    argv = list(sys.argv[1:] if argv is None else argv)
    check_recipe_file(argv)
    quiet_loading_bars()
    parser = TrlParser((RSConfig, ModelConfig))

    def refuse(message: str):  # argparse's own errors (a value outside a key's choices), as one line
        raise ConfigError(f"{message}; see `python -m rs_trainer --help` for each key's values.")

    parser.error = refuse
    for action in parser._actions:  # HfArgumentParser would call dict() on the text
        if action.dest == "generators":
            action.type = generator_entry
        if action.dest in ("reward_funcs", "eval_reward_funcs"):
            action.type = scorer_entry
    try:
        args, model_args = parser.parse_args_and_config(args=argv)
    except ValueError as err:
        message = str(err)
        if "Unknown arguments from config file" in message or "Some specified arguments are not used" in message:
            raise ConfigError(
                f"{message}\nEvery recipe key must be a field of RSConfig (docs/options.md#every-key) or TRL's "
                "ModelConfig; check the spelling of the keys named above."
            ) from None
        raise
    cli_keys = {a[2:].split("=")[0] for a in argv if a.startswith("--") and a != "--config"}
    check_peft_keys(model_args, cli_keys=cli_keys)
    check_model_args(model_args)
    args.generators_from_trl_keys(model_args.model_name_or_path, bool(model_args.use_peft))
    return args, model_args


def generator_entry(text: str) -> dict | list:
    """`--generators` on the command line: each argument one entry as a YAML (or JSON) mapping, or one YAML list of
    them, e.g. `--generators '{name: policy, engine: vllm}' '{name: teacher, model: org/teacher}'`."""
    import argparse

    import yaml

    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        value = None
    if isinstance(value, dict) or (isinstance(value, list) and value and all(isinstance(v, dict) for v in value)):
        return value
    raise argparse.ArgumentTypeError(
        f"{text!r} is not a generator entry; give each as a YAML mapping: '{{name: policy, engine: vllm}}'"
    )


def scorer_entry(text: str) -> str | dict:
    """`--reward_funcs` on the command line: a scorer's name as it is, or a judge as a YAML mapping,
    e.g. `--reward_funcs numeric_answer '{kind: judge, name: grader, base_url: ..., model: ...}'`."""
    import yaml

    if not text.lstrip().startswith("{"):
        return text
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        value = None
    if isinstance(value, dict):
        return value
    import argparse

    raise argparse.ArgumentTypeError(f"{text!r} is not a scorer entry; give a name or a YAML mapping in braces.")


def check_recipe_file(argv: list[str]) -> None:
    """`--config` names an existing YAML file holding a mapping of keys, or the run stops here naming it."""
    if "--config" not in argv:
        return
    at = argv.index("--config")
    if at + 1 >= len(argv):
        raise ConfigError("`--config` needs a recipe file: `--config recipes/<model>/<recipe>.yaml`.")
    path = argv[at + 1]
    if not os.path.isfile(path):
        raise ConfigError(f"`--config` {path} does not exist; recipes live in recipes/<model>/<recipe>.yaml.")
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            recipe = yaml.safe_load(f)
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        where = getattr(err, "problem_mark", None)
        line = f" (line {where.line + 1})" if where else ""
        raise ConfigError(f"`--config` {path} is not valid YAML{line}; a recipe is `key: value` lines.") from None
    if not isinstance(recipe, dict):
        raise ConfigError(f"`--config` {path} holds no `key: value` mapping; a recipe is `key: value` lines.")


def check_launch_matches_devices() -> None:
    """Refuse an accelerate config that asks for GPUs on a machine without one, instead of failing later or
    silently running somewhere else."""
    import torch

    env = os.environ
    wants_gpu = env.get("ACCELERATE_USE_CPU", "").lower() == "false" and env.get("CUDA_VISIBLE_DEVICES", "") != ""
    wants_sharding = any(env.get(k, "").lower() == "true" for k in ("ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED"))
    if (wants_gpu or wants_sharding) and not torch.cuda.is_available():
        raise ConfigError(
            "The accelerate config asks for GPUs (gpu_ids, FSDP or DeepSpeed) but this machine has no CUDA device; "
            "launch with `--config_file accelerate_configs/cpu.yaml` (or multi_cpu.yaml) instead."
        )


def dry_run(args, model_args) -> str:
    """The resolved plan, computed without loading any model."""
    from accelerate import PartialState

    from rs_trainer.run import data

    state = PartialState()
    train = data.load_prompts(args, args.dataset_train_split)
    m = min(args.prompts_per_round or len(train), len(train))
    args.check_selection_size(m)
    per_round = m * args.samples_per_prompt()  # N over every generator, as a round samples
    plan = {
        "config": {"rs": args.to_dict(), "model": vars(model_args)},
        "train_prompts": len(train),
        "prompts_per_round": m,
        "generations_per_round": per_round,
        "max_completion_tokens_per_round": [
            per_round * args.for_round("max_completion_length", r) for r in range(args.num_rounds)
        ],
        "rounds": args.num_rounds,
        "eval_splits": args.evaluation_splits(),
        "device": str(state.device),
        "world_size": state.num_processes,
        "output_dir": args.output_dir,
        "memory_per_gpu": memory_plan(args, model_args, *launch_layout(state)),
    }
    return json.dumps(plan, indent=2, default=str)


def launch_layout(state) -> tuple[int, bool, bool]:
    """This launch's process count, whether it shards the model (FSDP, or DeepSpeed ZeRO stage 3), and whether it is
    a GPU launch (`accelerate launch` with a GPU config sets `ACCELERATE_USE_CPU=false`)."""
    kind = str(state.distributed_type).rsplit(".", 1)[-1]
    stage = os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", "")
    sharded = kind == "FSDP" or (kind == "DEEPSPEED" and stage == "3")
    gpu = state.device.type == "cuda" or os.environ.get("ACCELERATE_USE_CPU", "").lower() == "false"
    return state.num_processes, sharded, gpu


def memory_plan(args, model_args, processes: int, sharded: bool, gpu: bool) -> dict | str:
    """`rs_trainer.run.memory`'s estimate for one of `processes` processes, from the model's config.json; on a GPU
    the sampler's default token budget is the GPU's."""
    from transformers import AutoConfig

    from rs_trainer.run import memory
    from rs_trainer.run.models import resolve_model_path

    try:
        config = AutoConfig.from_pretrained(resolve_model_path(model_args.model_name_or_path))
    except (OSError, ValueError) as err:
        return f"not estimated: the model's config.json could not be read ({first_line(err)})"
    dtype = model_args.dtype if model_args.dtype not in (None, "auto") else str(getattr(config, "dtype", None))
    budget = args.generation_token_budget or (memory.DEFAULT_GPU_TOKEN_BUDGET if gpu else 0)
    vllm = [s for s in args.generator_specs() if s.engine == "vllm" and s.is_policy]
    plan = memory.estimate(
        memory.model_shape(config),
        dtype=dtype.removeprefix("torch."),
        use_peft=bool(model_args.use_peft),
        lora_r=model_args.lora_r,
        lora_targets=model_args.lora_target_modules,
        load_in_4bit=bool(model_args.load_in_4bit),
        processes=processes,
        sharded=sharded,
        token_budget=budget,
        vllm_share=vllm[0].gpu_memory_utilization if vllm else None,
    )
    return {"processes": processes, "sharded": sharded, "token_budget": budget, **plan}


def run_command(prog: str, body: Callable[[], int | None]) -> int:
    """Every command's error handling, in one place: a user's mistake (`ConfigError`) is one `<prog>: error:`
    line and exit code 2; a generator that failed mid-run, or a full disk, one line and exit code 1 (what was
    written before is intact, and the same command resumes), and so is a collective whose peer process died or
    stalled past `ddp_timeout`. Anything else is a bug and keeps its traceback."""
    try:
        return body() or 0
    except ConfigError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    except (GeneratorError, UploadError) as err:  # a server failed mid-run, or the Hub: what is done is on disk
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 1
    except Exception as err:
        peer = lost_peer(err)
        if peer:  # another rank or node died mid-collective: one line, not every rank's traceback
            print(f"{prog}: error: {peer}", file=sys.stderr)
            return 1
        if not is_disk_full(err):
            raise
        detail = first_line(err)[:200]
        print(
            f"{prog}: error: a write failed for lack of disk space ({detail}); the files written before are "
            "intact: free some space, then rerun the same command to resume.",
            file=sys.stderr,
        )
        return 1


def train_main(argv: list[str] | None = None) -> int:
    """`accelerate launch -m rs_trainer --config <recipe> [--key value ...]`: rejection-sampling rounds."""

    def body():
        args, model_args = parse_args(argv)
        check_launch_matches_devices()
        if (model_args.load_in_4bit or model_args.load_in_8bit) and not model_args.use_peft:
            key = "load_in_4bit" if model_args.load_in_4bit else "load_in_8bit"
            raise ConfigError(
                f"`{key}` freezes the base weights in bitsandbytes' format, so only a LoRA adapter can train on "
                f"them (QLoRA); set `use_peft: true`, or drop `{key}` for full fine-tuning."
            )
        if args.dry_run:
            print(dry_run(args, model_args))
            return 0
        from rs_trainer.trainer import RejectionSamplingTrainer

        trainer = RejectionSamplingTrainer(args, model_args)
        try:
            trainer.setup()
            trainer.train()
            trainer.cleanup()
        finally:
            trainer.close()  # a judge's server the run started, even when the run failed

    return run_command("rs_trainer", body)


def best_of_n_main(argv: list[str] | None = None, candidate_models: list[str] | None = None) -> int:
    """`rs-trainer best-of-n --config <recipe>`: Best-of-N at inference time, no training."""
    from rs_trainer.tools.best_of_n import run

    def body():
        args, model_args = parse_args(argv)
        metrics = run(args, model_args, args.candidate_models if candidate_models is None else candidate_models)
        curve = ", ".join(f"n={n}: {r:.3f}" for n, r in zip(metrics["n"], metrics["expected_reward"], strict=True))
        print(f"expected best-of-n reward over {metrics['num_prompts_in_curve']} prompts: {curve}")
        print(f"wrote the best completions, metrics and plot to {args.output_dir}")

    return run_command("rs_trainer best-of-n", body)


def parse_reward_training_args(argv: list[str] | None = None):
    """The reward-model recipe: `RewardDataArguments`, `trl.RewardConfig` and `trl.ModelConfig`."""
    from rs_trainer.tools.reward_training import parse_args

    return parse_args(argv)


def reward_training_main(argv: list[str] | None = None) -> int:
    """`rs-trainer reward-model --config <recipe>`: a reward model from finished runs."""
    from rs_trainer.tools.reward_training import parse_args, train_reward_model

    def fmt(x):
        return "-" if x is None else f"{x:.3f}"  # no held-out pairs with `eval_fraction: 0`

    def body():
        metrics = train_reward_model(*parse_args(argv))
        print(
            f"reward model: {metrics['num_train_pairs']} train / {metrics['num_eval_pairs']} held-out pairs; "
            f"held-out pairwise accuracy {fmt(metrics['eval/pairwise_accuracy_before'])} untrained -> "
            f"{fmt(metrics['eval/pairwise_accuracy'])} trained"
        )
        for name in [k for k in metrics if k.startswith("eval/same_form") and not k.endswith("_before")]:
            print(f"  {name.removeprefix('eval/')}: {fmt(metrics[name + '_before'])} -> {fmt(metrics[name])}")

    return run_command("rs_trainer reward-model", body)


def export_main(argv: list[str] | None = None) -> int:
    """`rs-trainer export {dpo,sft,model} --output_dir <run> --out <file or folder>`: datasets for other trainers,
    or the trained policy as one model folder (`rs_trainer.tools.model_export`); `export html --output_dir <run>`
    writes the run browser, `<run>/index.html` (`rs_trainer.run.browser`), for a run or a best-of-N folder."""
    import argparse

    from rs_trainer.tools import export

    parser = argparse.ArgumentParser(prog="rs_trainer export", description=export.__doc__.split("\n\n")[0])
    parser.add_argument(
        "kind",
        choices=("dpo", "sft", "model", "html"),
        help="Preference pairs, an SFT set, the merged policy, or the run browser (output_dir/index.html).",
    )
    parser.add_argument("--output_dir", required=True, help="A run's output_dir (holding round_<r>/).")
    parser.add_argument("--out", default=None, help="The JSONL file to write (model: the folder; html: none).")
    parser.add_argument("--round", type=int, default=None, help="model: the round; default the last finished.")
    parser.add_argument("--push_to_hub", default=None, metavar="REPO_ID", help="model: upload the folder there.")
    parser.add_argument("--rounds", type=int, nargs="*", default=None, help="Rounds to export; default all.")
    parser.add_argument("--rule", choices=export.PAIR_RULES, default="best_vs_worst", help="dpo: the pairing rule.")
    parser.add_argument("--min_margin", type=float, default=0.0, help="dpo: smallest ranking-score gap of a pair.")
    parser.add_argument("--length_penalty", type=float, default=0.0, help="dpo: score = reward - this * tokens.")
    parser.add_argument("--seed", type=int, default=0, help="dpo: seed of tie-breaks and random draws.")
    parser.add_argument("--all_samples", action="store_true", help="sft: every sample, not only the selected.")
    parser.add_argument("--drop_truncated", action="store_true", help="sft: leave out truncated completions.")
    parser.add_argument("--pass_threshold", type=float, default=1.0, help="html, best-of-N folder: what passes.")
    ns = parser.parse_args(argv)

    def body():
        if ns.kind == "html":
            if ns.out is not None:
                raise ConfigError("`--out`: the page is always output_dir/index.html (it loads files beside it).")
            print(f"wrote {write_page(ns.output_dir, ns.pass_threshold)}")
            return
        if ns.out is None:
            raise ConfigError(f"`--out` is required for `export {ns.kind}`: the file (model: the folder) to write.")
        if ns.kind == "model":
            from rs_trainer.tools.model_export import export_model, push_to_hub

            folder = export_model(ns.output_dir, ns.out, ns.round)
            print(f"wrote the merged policy to {folder} (transformers and vllm serve load it)")
            if ns.push_to_hub:
                try:
                    print(f"pushed to {push_to_hub(folder, ns.push_to_hub)}")
                except Exception as err:  # offline, no token, no right to the repository
                    raise UploadError(
                        f"`--push_to_hub`: uploading {folder} to {ns.push_to_hub} failed ({first_line(err)[:200]}); "
                        "the folder is whole: rerun once the Hub is reachable and you are logged in."
                    ) from None
            return
        try:
            if ns.kind == "dpo":
                options = {"rule": ns.rule, "min_margin": ns.min_margin, "length_penalty": ns.length_penalty}
                rows = export.export_dpo(ns.output_dir, ns.out, ns.rounds, seed=ns.seed, **options)
            else:
                rows = export.export_sft(ns.output_dir, ns.out, ns.rounds, not ns.all_samples, ns.drop_truncated)
        except (FileNotFoundError, ValueError) as err:  # no such round, a run still generating, a bad option
            raise ConfigError(str(err)) from None
        print(f"wrote {len(rows)} {ns.kind} rows to {ns.out}")

    return run_command("rs_trainer export", body)


def write_page(output_dir: str, pass_threshold: float):
    """The run browser of a run folder, or of a best-of-N folder (holding `best_of_n.jsonl`)."""
    from pathlib import Path

    from rs_trainer.run.browser import write_best_of_n_page, write_run_page
    from rs_trainer.run.layout import RunLayout

    folder = Path(output_dir)
    if (folder / "best_of_n.jsonl").exists():
        return write_best_of_n_page(folder, pass_threshold)
    if not RunLayout(folder).rounds():
        raise ConfigError(f"`--output_dir`: {folder} holds no round_<r>/ folder nor best_of_n.jsonl; name a run's.")
    return write_run_page(folder)


COMMANDS: dict[str, Callable[[list[str]], int]] = {
    "train": train_main,
    "best-of-n": best_of_n_main,
    "reward-model": reward_training_main,
    "export": export_main,
}


def main(argv: list[str] | None = None) -> int:
    """`rs-trainer [train|best-of-n|reward-model|export] ...`: the command its first word names; without one
    (the first argument is `--config` or another key), training."""
    argv = list(sys.argv[1:] if argv is None else argv)
    quiet_console()  # before any library that prints at import
    if argv and argv[0] in COMMANDS:
        return COMMANDS[argv[0]](argv[1:])
    return train_main(argv)
