"""The demo_data stage: generates the synthetic set atomically, refuses classes it can't draw."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from pipeline import demo_data, synthetic
from pipeline.config import DemoParams, Params
from pipeline.errors import UserError
from tests.factories import project_params, raw_params


def demo_params(tmp_path, **changes) -> Params:
    demo = DemoParams(
        out_dir=str(tmp_path / "raw" / "demo"),
        images=30,
        size=32,
        external_dir=str(tmp_path / "external" / "site-b"),
        external_images=20,
    )
    return dataclasses.replace(project_params({"seed": 3}), demo=demo, **changes)


def test_run_writes_the_demo_set_and_its_second_site_in_a_line_each(tmp_path, capsys):
    params = demo_params(tmp_path)

    counts = demo_data.run(params)

    out = tmp_path / "raw" / "demo"
    assert counts == synthetic.class_counts(30)
    for label, n in counts.items():
        assert len(list((out / label).glob(f"{label} ([0-9]*).png"))) == n
        assert len(list((out / label).glob("*_mask.png"))) == n
    assert "SYNTHETIC" in (out / "README.md").read_text()
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 2
    assert "30" in printed[0]
    assert "synthetic" in printed[0]
    assert "20 synthetic second-site images" in printed[1]


def test_the_second_site_has_its_own_look_case_mix_and_no_copy_of_a_development_image(tmp_path):
    params = demo_params(tmp_path)
    demo_data.run(params)
    dev = {p.read_bytes() for p in (tmp_path / "raw" / "demo").glob("*/*).png")}
    site = sorted((tmp_path / "external" / "site-b").glob("*/*.png"))
    counts = synthetic.class_counts(20, synthetic.SITE_B_SHARES)
    assert len(site) == sum(counts.values()) == 20
    assert counts["malignant"] > synthetic.class_counts(20)["malignant"]  # a referral clinic's mix
    assert not dev & {p.read_bytes() for p in site}
    assert "SYNTHETIC" in (tmp_path / "external" / "site-b" / "README.md").read_text()


def test_the_second_sites_scanner_is_brighter_and_smoother_than_the_first():
    """The same case drawn by both scanners: site B's gain and speckle factors show."""
    import numpy as np

    first, _ = synthetic.render_case("benign", synthetic.case_rng(3, "benign", 1), 64)
    second, _ = synthetic.render_case(
        "benign", synthetic.case_rng(3, "benign", 1), 64, synthetic.SITE_B_LOOK
    )
    assert second.mean() > first.mean()
    top = slice(8, 24)  # above the depth where the stronger attenuation takes over
    assert np.std(second[top]) / second[top].mean() < np.std(first[top]) / first[top].mean()


def test_run_replaces_a_previous_demo_set_entirely(tmp_path):
    out = tmp_path / "raw" / "demo"
    (out / "benign").mkdir(parents=True)
    (out / "benign" / "stale.png").write_bytes(b"old")

    demo_data.run(demo_params(tmp_path))

    assert not (out / "benign" / "stale.png").exists()
    assert not [p for p in out.parent.iterdir() if p.name != "demo"]  # no temp folders left


def test_a_failed_run_leaves_no_half_written_folder(tmp_path, monkeypatch):
    generate = synthetic.generate

    def generate_then_fail(out_dir, n_images, size, seed):
        generate(out_dir, n_images, size, seed)
        raise OSError("disk full")

    monkeypatch.setattr(synthetic, "generate", generate_then_fail)
    with pytest.raises(OSError, match="disk full"):
        demo_data.run(demo_params(tmp_path))

    assert list((tmp_path / "raw").iterdir()) == []


def test_run_seeds_the_generator_from_params_seed(tmp_path):
    demo_data.run(demo_params(tmp_path / "a"))
    demo_data.run(demo_params(tmp_path / "b"))
    demo_data.run(demo_params(tmp_path / "c", seed=4))

    def first_image(root):
        return (root / "raw" / "demo" / "benign" / "benign (1).png").read_bytes()

    assert first_image(tmp_path / "a") == first_image(tmp_path / "b")
    assert first_image(tmp_path / "a") != first_image(tmp_path / "c")


@pytest.mark.parametrize(
    "classes",
    [
        ("benign", "malignant"),
        ("benign", "malignant", "cyst"),
        ("benign", "malignant", "normal", "x"),
    ],
)
def test_run_refuses_classes_the_generator_does_not_know(tmp_path, classes):
    with pytest.raises(UserError, match=r"^classes: .*only knows") as caught:
        demo_data.run(demo_params(tmp_path, classes=classes))
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "raw").exists()


def test_class_order_in_params_does_not_matter(tmp_path):
    counts = demo_data.run(demo_params(tmp_path, classes=("normal", "malignant", "benign")))
    assert sum(counts.values()) == 30


def test_main_exits_2_with_one_line_on_stderr_for_unknown_classes(tmp_path, capsys):
    params_file = tmp_path / "params.yaml"
    raw = {"classes": ["benign", "malignant", "cyst"], "demo": {"out_dir": str(tmp_path / "demo")}}
    params_file.write_text(yaml.safe_dump(raw_params(raw)))

    assert demo_data.main(["--params", str(params_file)]) == 2

    err = capsys.readouterr().err
    assert err.startswith("error: classes:")
    assert err.count("\n") == 1
    assert not (tmp_path / "demo").exists()


def test_main_exits_0_and_generates_with_a_valid_params_file(tmp_path):
    params_file = tmp_path / "params.yaml"
    demo = {
        "out_dir": str(tmp_path / "demo"),
        "images": 30,
        "size": 32,
        "external_dir": str(tmp_path / "site"),
        "external_images": 9,
    }
    params_file.write_text(yaml.safe_dump(raw_params({"demo": demo})))

    assert demo_data.main(["--params", str(params_file)]) == 0
    assert (tmp_path / "demo" / "README.md").is_file()
    assert (tmp_path / "site" / "README.md").is_file()
