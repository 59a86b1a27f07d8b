"""Atomic writes: a target holds the old complete content or the new, never a mix."""

import os

import pytest

from pipeline.files import staged_dir, write_json, write_text


def test_write_text_replaces_the_file_and_leaves_no_temporaries(tmp_path):
    target = tmp_path / "a" / "report.txt"
    write_text(target, "one")
    write_text(target, "two")
    assert target.read_text() == "two"
    assert [p.name for p in target.parent.iterdir()] == ["report.txt"]


def test_json_is_sorted_and_newline_terminated(tmp_path):
    write_json(tmp_path / "m.json", {"b": 1, "a": 2})
    assert (tmp_path / "m.json").read_text() == '{\n  "a": 2,\n  "b": 1\n}\n'


def test_a_failed_stage_keeps_the_previous_folder_whole(tmp_path):
    out = tmp_path / "prepared"
    with staged_dir(out) as tmp:
        (tmp / "old.txt").write_text("complete")

    def fail_halfway() -> None:
        with staged_dir(out) as tmp:
            (tmp / "half.txt").write_text("partial")
            raise RuntimeError("stage failed")

    with pytest.raises(RuntimeError, match="stage failed"):
        fail_halfway()
    assert [p.name for p in out.iterdir()] == ["old.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prepared"]


def test_a_staged_folder_gets_ordinary_permissions(tmp_path):
    with staged_dir(tmp_path / "out") as tmp:
        (tmp / "x").write_text("x")
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o777 & ~umask
