from rs_trainer.progress import progress_bar


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
