"""Shared fixtures: small slices of the shipped sample corpus."""

import gzip
import importlib.resources
import os

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def sample_documents(count: int, *, start: int = 0) -> list[str]:
    """Documents `start..start+count` of the shipped KJV sample corpus."""
    path = importlib.resources.files("mlm.data") / "kjv.txt.gz"
    with gzip.open(path, "rt", encoding="utf-8") as f:
        docs = [d.strip() for d in f.read().split("\n\n") if d.strip()]
    return docs[start : start + count]


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory):
    """A 60-document text file (blank lines between documents)."""
    path = tmp_path_factory.mktemp("corpus") / "kjv60.txt"
    path.write_text("\n\n".join(sample_documents(60)) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def held_out_corpus(tmp_path_factory):
    """Ten documents the small corpus does not contain."""
    path = tmp_path_factory.mktemp("held") / "kjv_held.txt"
    path.write_text("\n\n".join(sample_documents(10, start=1000)) + "\n", encoding="utf-8")
    return path
