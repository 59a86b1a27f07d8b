"""The batch scorer: one row per file, the service's answer or its reason, streamed in batches."""

from __future__ import annotations

import csv
import tracemalloc

import pytest

from pipeline import predict
from pipeline.serving.classifier import load_classifier
from pipeline.serving.uploads import decode_upload
from tests.factories import encode, scan


@pytest.fixture(scope="module")
def classifier(mini_release):
    return load_classifier(mini_release[0])


def read(path):
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_a_folder_gets_one_row_per_file_with_the_services_answer_or_its_reason(
    tmp_path, classifier, mini_release
):
    source = tmp_path / "scans"
    (source / "sub").mkdir(parents=True)
    (source / "a.png").write_bytes(encode(scan(1)))
    (source / "sub" / "b.jpg").write_bytes(encode(scan(2), "JPEG"))
    (source / "notes.txt").write_text("not an image")
    (source / "broken.png").write_bytes(encode(scan(3))[:60])
    (source / "link.png").symlink_to(source / "a.png")
    out = tmp_path / "out" / "predictions.csv"
    assert predict.main([str(source), "--model", str(mini_release[0]), "--out", str(out)]) == 0
    rows = {row["path"]: row for row in read(out)}
    assert set(rows) == {"a.png", "sub/b.jpg", "notes.txt", "broken.png", "link.png"}
    expected = classifier.predict(decode_upload(encode(scan(1))))
    a = rows["a.png"]
    assert a["status"] == "200"
    assert a["class"] == expected["class"]
    assert float(a["p_malignant"]) == pytest.approx(
        expected["probabilities"]["malignant"], abs=1e-6
    )
    assert a["refer"] == str(expected["decision"]["refer"])
    assert a["model_version"] == "3"
    assert rows["notes.txt"]["status"] == "415"
    assert rows["notes.txt"]["reason"]
    assert rows["broken.png"]["status"] == "400"
    assert "class" in rows["broken.png"]
    assert rows["link.png"]["status"] == "400"
    assert "link" in rows["link.png"]["reason"]


def test_a_csv_of_paths_is_read_relative_to_itself(tmp_path, mini_release):
    (tmp_path / "x.png").write_bytes(encode(scan(4)))
    listing = tmp_path / "list.csv"
    listing.write_text("path,label\nx.png,benign\nmissing.png,normal\n")
    out = tmp_path / "p.csv"
    assert predict.main([str(listing), "--model", str(mini_release[0]), "--out", str(out)]) == 0
    rows = read(out)
    assert [r["status"] for r in rows] == ["200", "400"]


def test_user_mistakes_are_one_line_and_leave_no_output(tmp_path, mini_release, capsys):
    out = tmp_path / "p.csv"
    assert (
        predict.main(
            [str(tmp_path / "nowhere"), "--model", str(mini_release[0]), "--out", str(out)]
        )
        == 2
    )
    assert (
        predict.main([str(tmp_path), "--model", str(tmp_path / "no-model"), "--out", str(out)]) == 2
    )
    bad = tmp_path / "bad.csv"
    bad.write_text("file\nx.png\n")
    assert predict.main([str(bad), "--model", str(mini_release[0]), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3
    assert all(line.startswith("error: ") for line in err)
    assert not out.exists()
    assert not list(tmp_path.glob(".p.csv.*"))


def test_memory_does_not_grow_with_the_number_of_files(tmp_path, classifier):
    """Python-heap peak for 200 and for 800 files: the same bound, since rows stream out."""
    data = encode(scan(5, 24, 24))
    peaks = []
    for count in (200, 800):
        source = tmp_path / f"n{count}"
        source.mkdir()
        for i in range(count):
            (source / f"{i:05d}.png").write_bytes(data)
        tracemalloc.start()
        predict.score(source, classifier, tmp_path / f"{count}.csv")
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        assert len(read(tmp_path / f"{count}.csv")) == count
    assert peaks[1] < 1.5 * peaks[0], peaks


def test_dicom_files_are_scored_on_their_region_and_cine_loops_refused(
    tmp_path, classifier, mini_release
):
    from tests.dicoms import make_dicom

    source = tmp_path / "exports"
    source.mkdir()
    (source / "IM0001").write_bytes(make_dicom(scan(4), photometric="RGB"))  # no suffix, as PACS
    (source / "loop.dcm").write_bytes(make_dicom(scan(5), frames=2))
    out = tmp_path / "predictions.csv"
    assert predict.main([str(source), "--model", str(mini_release[0]), "--out", str(out)]) == 0
    rows = {row["path"]: row for row in read(out)}
    expected = classifier.predict(decode_upload(encode(scan(4))))
    assert rows["IM0001"]["class"] == expected["class"]
    assert float(rows["IM0001"]["p_malignant"]) == pytest.approx(
        expected["probabilities"]["malignant"], abs=1e-6
    )
    assert rows["loop.dcm"]["status"] == "422"
    assert "multi_frame" in rows["loop.dcm"]["reason"]
