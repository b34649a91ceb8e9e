"""Progress: redrawn in place on a terminal, periodic plain lines elsewhere, none when quiet."""

import io

from mlm.progress import Progress, format_duration, track


class Terminal(io.StringIO):
    def isatty(self):
        return True


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_terminal_line_is_redrawn_in_place_with_an_eta():
    stream, clock = Terminal(), Clock()
    bar = Progress("tokenizing train", total=10, unit="documents", stream=stream, clock=clock)
    clock.now = 0.1
    bar.update(1)  # too soon after the start to redraw
    assert stream.getvalue() == ""
    clock.now = 2.0
    bar.update(5)  # 5 of 10 in 2 s: 2 s left
    assert stream.getvalue() == "\r\x1b[Ktokenizing train: 5/10 documents (50%), ETA 2s"
    clock.now = 4.0
    bar.finish()
    assert stream.getvalue().endswith("\r\x1b[Ktokenizing train: 5/10 documents, done in 4s\n")


def test_an_estimated_total_is_marked_and_the_count_may_pass_it():
    stream, clock = Terminal(), Clock()
    bar = Progress("tokenizing train", total=10, unit="documents", stream=stream, clock=clock,
                   approximate=True)
    clock.now = 2.0
    bar.update(5)
    assert stream.getvalue() == "\r\x1b[Ktokenizing train: 5/~10 documents (50%), ETA 2s"
    clock.now = 5.0
    bar.update(12)  # past the estimate: full, no time left
    assert stream.getvalue().endswith("tokenizing train: 12/~10 documents (100%), ETA 0s")
    bar.finish()  # the count alone: the estimate is of no use any more
    assert stream.getvalue().endswith("\r\x1b[Ktokenizing train: 12 documents, done in 5s\n")


def test_message_is_printed_above_the_terminal_line():
    stream, clock = Terminal(), Clock()
    bar = Progress("training", total=4, unit="steps", stream=stream, clock=clock)
    clock.now = 1.0
    bar.update(1)
    bar.say("step 1: held-out masked accuracy 0.1")
    assert stream.getvalue().endswith("\r\x1b[Kstep 1: held-out masked accuracy 0.1\n")
    clock.now = 1.01
    bar.update(2)  # redrawn at once under the message
    assert stream.getvalue().endswith("training: 2/4 steps (50%), ETA 1s")


def test_plain_lines_are_periodic_when_not_a_terminal():
    stream, clock = io.StringIO(), Clock()
    bar = Progress("tokenizing train", total=100, unit="documents", stream=stream, clock=clock,
                   plain_every=10.0)
    for done in range(1, 101):
        clock.now = done * 0.5  # 50 s in all: a line at 10, 20, 30, 40 and 50 s
        bar.update(done, note=f"{done * 7:,} tokens")
    bar.finish()
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue()
    assert lines[0] == "tokenizing train: 20/100 documents (20%), 140 tokens, ETA 40s"
    assert len(lines) == 6
    assert lines[-1] == "tokenizing train: 100/100 documents, 700 tokens, done in 50s"


def test_resumed_progress_counts_only_the_steps_done_here_for_the_eta():
    stream, clock = io.StringIO(), Clock()
    bar = Progress("training", total=100, initial=50, unit="steps", stream=stream, clock=clock,
                   plain_every=1.0)
    clock.now = 10.0
    bar.update(60)  # 10 steps in 10 s, 40 to go
    assert stream.getvalue() == "training: 60/100 steps (60%), ETA 40s\n"


def test_disabled_progress_prints_nothing():
    stream, clock = Terminal(), Clock()
    bar = Progress("training", total=3, stream=stream, clock=clock, enabled=False)
    for step in range(1, 4):
        clock.now = step * 10.0
        bar.update(step)
    bar.say("a message")
    bar.finish()
    assert stream.getvalue() == ""


def test_track_yields_every_item_and_ends_with_a_summary(capsys):
    items = list(track(iter(range(5)), label="counting words", total=5, unit="documents"))
    assert items == [0, 1, 2, 3, 4]
    assert capsys.readouterr().err.startswith("counting words: 5/5 documents, done in ")


def test_quiet_metrics_log_prints_nothing(tmp_path, capsys):
    from mlm.run.log import MetricsLog

    log = MetricsLog(tmp_path, quiet=True)
    with log.progress("training", total=2, unit="steps") as bar:
        bar.update(1)
        log.say("step 1: held-out masked accuracy 0.5")
        bar.update(2)
    assert capsys.readouterr() == ("", "")


def test_tokenizing_progress_follows_the_progress_flag(tmp_path, capsys):
    import keras_hub

    from mlm.data.token_cache import load_or_build_cache
    from tests.conftest import TINY_VOCABULARY

    tokenizer = keras_hub.tokenizers.BertTokenizer(vocabulary=TINY_VOCABULARY)
    documents = {"train": lambda: ["the cat", "cat the the"], "held_out": lambda: ["the"]}
    load_or_build_cache(documents, tokenizer, cache_root=tmp_path, key="quiet", progress=False)
    assert capsys.readouterr().err == ""
    load_or_build_cache(documents, tokenizer, cache_root=tmp_path, key="shown", progress=True)
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("tokenizing train: 2/2 documents, 7 tokens (")
    assert err[1].startswith("tokenizing held_out: 1/1 documents, 2 tokens (")


def test_durations_read_naturally():
    assert [format_duration(s) for s in (0.4, 42, 187, 7500)] == ["0s", "42s", "3m07s", "2h05m"]
