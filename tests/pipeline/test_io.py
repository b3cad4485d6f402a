"""Output folders: the tool replaces only what it created (marker file), never a user's folder or file."""

import os

import pytest

from pipeline.common.io import OUTPUT_MARKER, InputError, atomic_dir, claim_dir


def test_atomic_dir_refuses_a_users_folder_and_keeps_its_files(tmp_path):
    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("keep me")
    with pytest.raises(InputError, match="is not empty and is not a previous export output"):
        with atomic_dir(user, "export") as tmp:
            (tmp / "x").write_text("new")
    assert (user / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]  # no temporary folder left behind


def test_atomic_dir_refuses_a_file(tmp_path):
    f = tmp_path / "afile"
    f.write_text("data")
    with pytest.raises(InputError, match="exists and is not a folder"):
        with atomic_dir(f, "export"):
            pass
    assert f.read_text() == "data"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_atomic_dir_replaces_its_own_output_of_the_same_kind_only(tmp_path):
    out = tmp_path / "out"
    with atomic_dir(out, "export") as tmp:
        (tmp / "a").write_text("1")
    assert (out / OUTPUT_MARKER).read_text().strip() == "export"
    with atomic_dir(out, "export") as tmp:
        (tmp / "b").write_text("2")
    assert sorted(p.name for p in out.iterdir()) == sorted([OUTPUT_MARKER, "b"])
    with pytest.raises(InputError, match="holds this tool's export output, not a synthetic scene output"):
        with atomic_dir(out, "synthetic scene"):
            pass
    assert (out / "b").read_text() == "2"


def test_atomic_dir_accepts_an_empty_folder_and_refuses_the_current_one(tmp_path, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    with atomic_dir(empty, "export") as tmp:
        (tmp / "a").write_text("1")
    assert (empty / "a").is_file()
    monkeypatch.chdir(empty)
    with pytest.raises(InputError, match="is the current folder"):
        with atomic_dir(".", "export"):
            pass
    assert (empty / "a").is_file()


def test_claim_dir_marks_new_folders_and_refuses_foreign_ones(tmp_path):
    run = claim_dir(tmp_path / "run", "run")
    assert (run / OUTPUT_MARKER).read_text().strip() == "run"
    (run / "stage").mkdir()
    assert claim_dir(tmp_path / "run", "run") == run  # own output of the same kind: reused
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "img.jpg").write_bytes(b"\xff\xd8")
    with pytest.raises(InputError, match="photos: folder is not empty"):
        claim_dir(foreign, "run")
    assert not (foreign / OUTPUT_MARKER).exists()
    with pytest.raises(InputError, match="holds this tool's run output, not an export output"):
        claim_dir(tmp_path / "run", "export")
    assert os.listdir(foreign) == ["img.jpg"]
