"""Bad input: one line naming the problem and the fix, exit 2, nothing left behind."""

import functools

import pytest

from tests.conftest import run_mlm

# `mlm.cli.main` in this process: (exit status, stdout, stderr).
run_main = functools.partial(run_mlm, in_process=True)


def assert_one_line_error(code, err, *needles):
    assert code == 2
    assert "Traceback" not in err
    # Progress lines may come first; the error is the one last line.
    lines = err.strip().splitlines()
    assert [line for line in lines if line.startswith("mlm: error: ")] == lines[-1:], err
    for needle in needles:
        assert needle in lines[-1], lines[-1]


@pytest.fixture
def run_dir(tmp_path):
    return tmp_path / "run"


def pretrain_args(run_dir, *extra):
    return ("pretrain", "--recipe", "bert_test", "--run-dir", run_dir, *extra)


def test_missing_corpus_path(run_dir, tmp_path):
    code, _, err = run_main(*pretrain_args(run_dir, "--corpus", tmp_path / "nope.txt"))
    assert_one_line_error(code, err, "nope.txt")
    assert not run_dir.exists()


def test_empty_corpus(run_dir, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n   \n")
    code, _, err = run_main(*pretrain_args(run_dir, "--corpus", empty))
    assert_one_line_error(code, err, "empty.txt")
    assert not run_dir.exists()


def test_binary_corpus(run_dir, tmp_path):
    binary = tmp_path / "model.txt"
    binary.write_bytes(bytes(range(256)) * 100)
    code, _, err = run_main(*pretrain_args(run_dir, "--corpus", binary))
    assert_one_line_error(code, err, "model.txt")
    assert not run_dir.exists()


def test_non_utf8_corpus(run_dir, tmp_path):
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("Caf\u00e9 cr\u00e8me and more text here.\n".encode("latin-1"))
    code, _, err = run_main(*pretrain_args(run_dir, "--corpus", latin1))
    assert_one_line_error(code, err, "latin1.txt", "UTF-8")
    assert not run_dir.exists()


def test_corpus_too_small_for_one_batch_leaves_nothing_behind(run_dir, tmp_path):
    tiny = tmp_path / "tiny.txt"
    tiny.write_text("In the beginning God created the heaven and the earth.\n\nAmen.\n")
    held = tmp_path / "held.txt"
    held.write_text("And the earth was without form, and void.\n")
    code, _, err = run_main(*pretrain_args(run_dir, "--corpus", tiny, "--held-out", held))
    assert_one_line_error(code, err, "too small for one batch", "batch_size=8")
    assert not run_dir.exists()


def test_unknown_recipe(run_dir):
    code, _, err = run_main("pretrain", "--recipe", "bert_huge", "--run-dir", run_dir)
    assert_one_line_error(code, err, "unknown recipe 'bert_huge'", "bert_tiny_en_uncased")


def test_unknown_field(run_dir):
    code, _, err = run_main(*pretrain_args(run_dir, "--set", "train.stepz=3"))
    assert_one_line_error(code, err, "train.stepz", "steps")


def test_out_of_range_option(run_dir):
    code, _, err = run_main(*pretrain_args(run_dir, "--set", "masking.selection_rate=1.5"))
    assert_one_line_error(code, err, "selection_rate=1.5")


def test_sequence_length_above_the_backbone_maximum(run_dir):
    code, _, err = run_main(*pretrain_args(run_dir, "--sequence-length", "600"))
    assert_one_line_error(code, err, "max_sequence_length=512", "sequence_length=600")


def test_existing_run_dir_needs_resume_or_overwrite(run_dir):
    run_dir.mkdir()
    (run_dir / "something").write_text("keep me")
    code, _, err = run_main(*pretrain_args(run_dir))
    assert_one_line_error(code, err, "--resume", "--overwrite")
    assert (run_dir / "something").read_text() == "keep me"


def test_resume_of_a_folder_that_is_no_run(run_dir):
    run_dir.mkdir()
    code, _, err = run_main("pretrain", "--run-dir", run_dir, "--resume")
    assert_one_line_error(code, err, "cannot resume")


def test_predict_on_a_folder_that_is_no_preset(tmp_path):
    code, _, err = run_main("predict", tmp_path, "The [MASK] sat.")
    assert_one_line_error(code, err, "not a keras-hub preset")


def test_builtin_preset_offline_says_no_network():
    code, _, err = run_main("predict", "bert_tiny_en_uncased", "The [MASK] sat.")
    assert_one_line_error(code, err, "could not download preset bert_tiny_en_uncased",
                          "local directory")


def test_export_of_a_run_without_checkpoints(tmp_path):
    code, _, err = run_main("export", tmp_path, "--out", tmp_path / "out")
    assert_one_line_error(code, err, "no complete checkpoint")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_real_process_exits_2_without_traceback(tmp_path):
    code, _, err = run_mlm("pretrain", "--recipe", "bert_test", "--corpus", tmp_path / "missing",
                           "--run-dir", tmp_path / "run")
    assert code == 2
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("mlm: error: ")
    assert not (tmp_path / "run").exists()


def test_recipes_lists_the_shipped_recipes():
    code, out, _ = run_main("recipes")
    assert code == 0
    assert {"bert_tiny_en_uncased", "bert_small_en_uncased", "bert_test"} <= set(out.split())


def test_recipes_fields_lists_every_field_with_its_default_and_meaning():
    import dataclasses

    from mlm.config import SECTIONS

    code, out, _ = run_main("recipes", "--fields")
    assert code == 0
    listed = [line.split(" = ")[0] for line in out.splitlines() if " = " in line
              and not line.startswith(" ")]
    assert listed == [f"{s}.{f.name}" for s, cls in SECTIONS.items()
                      for f in dataclasses.fields(cls)]
    for field, default in [("masking.unit", '"token"'), ("masking.span_p", "0.2"),
                           ("train.budget", '""'), ("train.phases", "[]"),
                           ("train.accumulation_steps", "1"),
                           ("corpus.document_boundary", '"blank_line"')]:
        line = out.splitlines().index(f"{field} = {default}")
        assert len(out.splitlines()[line + 1].strip()) > 20  # its description


def test_vocab_command_writes_a_vocabulary_file(small_corpus, tmp_path):
    out = tmp_path / "bert_vocab"
    code, stdout, _ = run_main("vocab", "--corpus", small_corpus, "--size", "300",
                               "--out", out)
    assert code == 0 and str(out) in stdout
    lines = (out / "vocabulary.txt").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 300
    assert lines[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    code, _, err = run_main("vocab", "--corpus", small_corpus, "--architecture", "bpe",
                            "--out", tmp_path / "other")
    assert_one_line_error(code, err, "unknown architecture 'bpe'", "roberta")
    assert not (tmp_path / "other").exists()
    code, _, err = run_main("vocab", "--corpus", small_corpus, "--out", out)
    assert_one_line_error(code, err, "exists", "empty folder")


def test_vocab_command_writes_every_file_of_a_family(small_corpus, tmp_path):
    out = tmp_path / "roberta_vocab"
    code, stdout, _ = run_main("vocab", "--corpus", small_corpus, "--size", "400",
                               "--architecture", "roberta", "--cased", "--out", out)
    assert code == 0, stdout
    assert sorted(p.name for p in out.iterdir()) == ["merges.txt", "vocabulary.json"]
    assert "byte_bpe vocabulary for roberta" in stdout


def test_vocab_command_byte_fallback(small_corpus, tmp_path):
    import sentencepiece

    out = tmp_path / "albert_vocab"
    code, stdout, _ = run_main("vocab", "--corpus", small_corpus, "--size", "400",
                               "--architecture", "albert", "--byte-fallback", "--out", out)
    assert code == 0, stdout
    model = sentencepiece.SentencePieceProcessor(model_file=str(out / "vocabulary.spm"))
    pieces = [model.id_to_piece(i) for i in range(model.get_piece_size())]
    assert [p for p in pieces if p.startswith("<0x")] == [f"<0x{b:02X}>" for b in range(256)]
    code, _, err = run_main("vocab", "--corpus", small_corpus, "--byte-fallback",
                            "--out", tmp_path / "bert_vocab")
    assert_one_line_error(code, err, "byte_fallback needs the sentencepiece family",
                          "remove byte_fallback")
    assert not (tmp_path / "bert_vocab").exists()
