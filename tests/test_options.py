"""Each recipe key's facts live on its field: docs/options.md's list of every key is written from the fields, the
one check loop reads ranges and choices from them, the key lists the package uses derive from them, and the
selection rules' table (`phases.selection.RULES`) is where `selection`'s choices come from."""

import dataclasses
import subprocess
import sys

import pytest
from helpers import REPO

from rs_trainer.config import RSConfig, keys_with, reference, selection_keys
from rs_trainer.errors import ConfigError
from rs_trainer.phases.selection import RULES

FIELDS = {f.name: f for f in dataclasses.fields(RSConfig)}


def test_docs_options_lists_every_key_as_the_fields_declare_it():
    text = (REPO / "docs/options.md").read_text(encoding="utf-8")
    written = text[text.index(reference.BEGIN) : text.index(reference.END) + len(reference.END)]
    assert written == reference.markdown(), (
        "docs/options.md's list of keys is out of date: run `python -m rs_trainer.config.reference --write "
        "docs/options.md`"
    )
    for name in FIELDS:
        assert f"| `{name}` |" in written
    row = next(line for line in written.splitlines() if line.startswith("| `top_p` |"))
    assert row.startswith("| `top_p` | `[1.0]` | number, 0 < x ≤ 1; per round | Nucleus sampling p")
    row = next(line for line in written.splitlines() if line.startswith("| `selection` |"))
    assert "`best_of_n`, `top_k_per_prompt`, `threshold`, `percentile`, `top_k`, `top_fraction` or `rso`" in row


def test_the_list_is_rewritten_in_place(tmp_path):
    page = tmp_path / "options.md"
    page.write_text(f"# Options\n\nprose\n\n{reference.BEGIN}\nstale\n{reference.END}\n\nmore prose\n")
    subprocess.run(
        [sys.executable, "-m", "rs_trainer.config.reference", "--write", str(page)], check=True, capture_output=True
    )
    text = page.read_text()
    assert text.startswith("# Options\n\nprose\n\n") and text.endswith("\n\nmore prose\n")
    assert "stale" not in text and "| `learning_rate` | `0.0002` | number, x > 0 |" in text
    page.write_text("no markers")
    with pytest.raises(ValueError, match="no list to replace"):
        reference.replaced(page.read_text())


def test_every_key_has_help_and_every_text_key_with_fixed_values_declares_them():
    assert all(f.metadata.get("help") for f in FIELDS.values())
    with_choices = {name for name, f in FIELDS.items() if "choices" in f.metadata}
    assert with_choices == {
        "vllm_mode",
        "generation_engine",
        "selection",
        "dedupe",
        "kl_to_base",
        "max_kl_action",
        "sft_from",
    }
    assert FIELDS["selection"].metadata["choices"] == tuple(RULES)


@pytest.mark.parametrize(
    "key,value,message",
    [
        ("selection", "median", "`selection` must be best_of_n, top_k_per_prompt, threshold, percentile, top_k, "),
        ("kl_to_base", "sometimes", "`kl_to_base` must be auto, on or off, got 'sometimes'."),
        ("max_kl_action", "halt", "`max_kl_action` must be warn or stop, got 'halt'."),
        ("sft_from", "start", "`sft_from` must be previous or base, got 'start'."),
        ("generation_engine", "vllm", "`generation_engine` must be auto, rs or hf, got 'vllm'."),
        ("dedupe", "fuzzy", "`dedupe` must be exact, normalised or null, got 'fuzzy'."),
    ],
)
def test_a_value_outside_a_keys_choices_gets_one_message_from_yaml_and_the_command_line(
    key, value, message, tiny_model, tmp_path, capsys
):
    from rs_trainer.cli import main

    with pytest.raises(ConfigError) as err:
        RSConfig(**{key: value})
    assert message in str(err.value)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"model_name_or_path: {tiny_model}\n{key}: {value}\n")
    out = ["--output_dir", str(tmp_path / "out")]
    for argv in (["--config", str(recipe), *out], ["--model_name_or_path", str(tiny_model), f"--{key}", value, *out]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("rs_trainer: error:") == 1, err
        assert not (tmp_path / "out").exists()


def test_choices_show_in_the_command_lines_help_and_argparse_gets_only_its_own_keys():
    from trl import ModelConfig, TrlParser

    parser = TrlParser((RSConfig, ModelConfig))  # a user's own TrlParser over RSConfig works as well
    text = " ".join(parser.format_help().split())  # argparse wraps the lines
    assert "One of: best_of_n, top_k_per_prompt, threshold, percentile, top_k, top_fraction, rso." in text
    assert set(FIELDS["learning_rate"].metadata.copy()) == {"help"}
    assert FIELDS["learning_rate"].metadata["range"].span() == "x > 0"


def test_the_key_lists_derive_from_the_fields_and_the_rules():
    assert keys_with("resumable") == (
        "num_rounds",
        "generation_batch_size",
        "generation_token_budget",
        "generation_engine",
        "verifier_workers",
        "reward_model_device",
    )
    assert selection_keys() == {
        "k_per_prompt": ("top_k_per_prompt", "rso"),
        "reward_threshold": ("threshold",),
        "max_per_prompt": ("threshold", "percentile"),
        "reward_percentile": ("percentile",),
        "selection_top_k": ("top_k",),
        "top_fraction": ("top_fraction",),
        "rso_beta": ("rso",),
    }
    with pytest.raises(ConfigError, match=r"`selection: top_k` needs `selection_top_k` \(the samples kept"):
        RSConfig(selection="top_k")
    with pytest.raises(ConfigError, match="`rso_beta` is set but `selection` is 'percentile'"):
        RSConfig(selection="percentile", rso_beta=[0.2])


def test_null_texts_read_as_null_where_a_key_takes_null():
    args = RSConfig(dedupe="none", eval_dataset_name="null", id_column="", dataset_test_split="None")
    assert (args.dedupe, args.eval_dataset_name, args.id_column, args.dataset_test_split) == (None,) * 4
    assert RSConfig(dataset_train_split="none").dataset_train_split == "none"  # a key that takes no null
