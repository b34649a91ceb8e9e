"""Atomic writes: the target is the old version or the new one, never a part."""

import json

import pytest

from mlm import atomic


def test_write_json_replaces_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "sub" / "state.json"
    atomic.write_json(path, {"step": 1})
    atomic.write_json(path, {"step": 2})
    assert json.loads(path.read_text()) == {"step": 2}
    assert sorted(p.name for p in path.parent.iterdir()) == ["state.json"]


def test_a_failed_file_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "loss.png"
    atomic.write_bytes(path, b"old")
    with pytest.raises(RuntimeError):
        with atomic.writing_file(path) as tmp:
            assert tmp.suffix == ".png" and tmp.parent == tmp_path  # savefig reads the suffix
            tmp.write_bytes(b"ne")
            raise RuntimeError("killed mid-write")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["loss.png"]


def test_writing_dir_replaces_a_complete_folder_or_leaves_it(tmp_path):
    out = tmp_path / "vocab"
    with atomic.writing_dir(out) as tmp:
        (tmp / "vocab.txt").write_text("a\n")
    with pytest.raises(KeyboardInterrupt):
        with atomic.writing_dir(out) as tmp:
            (tmp / "vocab.txt").write_text("half")
            raise KeyboardInterrupt
    assert (out / "vocab.txt").read_text() == "a\n"
    with atomic.writing_dir(out) as tmp:
        (tmp / "merges.txt").write_text("b\n")
    assert sorted(p.name for p in out.iterdir()) == ["merges.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vocab"]


def test_copy_dir_and_temporaries_are_recognised(tmp_path):
    source = tmp_path / "a"
    (source / "assets").mkdir(parents=True)
    (source / "assets" / "x.txt").write_text("x")
    atomic.copy_dir(source, tmp_path / "b")
    assert (tmp_path / "b" / "assets" / "x.txt").read_text() == "x"
    assert atomic.is_temporary(atomic.temporary_sibling(tmp_path / "b"))
    assert not atomic.is_temporary(tmp_path / "b")
