from rs_trainer.run.progress import progress_bar


def test_progress_outside_a_terminal_prints_whole_lines(capsys):
    with progress_bar(3, "round 0 generate", "samples") as bar:
        for _ in range(3):
            bar.update(1)
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = [line for line in err.splitlines() if line]
    assert lines and all(line.startswith("round 0 generate") for line in lines)
    assert "3/3" in lines[-1]


def test_progress_is_silent_off_the_main_process(capsys):
    with progress_bar(3, "x", "samples", enabled=False) as bar:
        bar.update(3)
    assert capsys.readouterr().err == ""


def test_sft_progress_outside_a_terminal_prints_no_line_per_step(tiny_model, tmp_path, capsys):
    """The trainer's SFT bar shows the loss without a redraw of its own: a round of many quick steps prints a
    couple of lines, not one (or two) per step, and the last one shows the loss."""
    from helpers import recipe_args

    from rs_trainer.cli import parse_args
    from rs_trainer.trainer import RejectionSamplingTrainer

    args, model_args = parse_args(
        recipe_args(
            tiny_model, tmp_path / "o", num_train_epochs=6, per_device_train_batch_size=1, dataset_test_split=None
        )
    )
    trainer = RejectionSamplingTrainer(args, model_args)
    trainer.setup()
    history = trainer.train()
    assert history[0]["train/steps"] == 24  # top_k 4, batch 1, 6 epochs
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("round 0 sft")]
    # A line when the bar opens, one every 15 s and one when it closes (and one of slack): a few lines however long
    # a loaded machine makes the SFT take, not one per step.
    assert 1 <= len(lines) <= 3 + history[0]["timing/sft"] // 15, lines
    assert "24/24" in lines[-1] and "loss=" in lines[-1]
