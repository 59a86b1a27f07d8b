"""Generate the built-in synthetic demo data set (ultrasound-like, NOT patient images).

Writes `demo.images` images of `demo.size` pixels in BUSI layout under `demo.out_dir`, seeded from
`seed`, so `dvc repro` runs end to end offline without any data of your own; and a second synthetic
site, `demo.external_images` images under `demo.external_dir` with another scanner look and case
mix, for external validation (`data.external`). Each folder is built aside and swapped in only
when complete.
"""

from __future__ import annotations

from collections.abc import Sequence

from pipeline import synthetic
from pipeline.cli import stage_main
from pipeline.config import Params
from pipeline.errors import UserError
from pipeline.files import staged_dir


def run(params: Params) -> dict[str, int]:
    """Generate the demo set into `params.demo.out_dir`; return the number of images per class."""
    if set(params.classes) != set(synthetic.CLASSES) or len(params.classes) != 3:
        raise UserError(
            f"classes: the demo generator only knows {list(synthetic.CLASSES)}, got "
            f"{list(params.classes)}; use these three or point data.raw_dir at your own data"
        )
    demo = params.demo
    with staged_dir(demo.out_dir) as tmp:
        counts = synthetic.generate(tmp, demo.images, demo.size, params.seed)
    # the second site's side differs from the first's: image size is part of its case mix
    site_size = max(32, round(demo.size * 0.75))
    with staged_dir(demo.external_dir) as tmp:
        site = synthetic.generate_site(tmp, demo.external_images, site_size, params.seed)
    for what, found, where in (
        ("", counts, demo.out_dir),
        (" second-site", site, demo.external_dir),
    ):
        summary = ", ".join(f"{n} {label}" for label, n in found.items())
        print(f"demo_data: {sum(found.values())} synthetic{what} images ({summary}) -> {where}")
    return counts


def main(argv: Sequence[str] | None = None) -> int:
    """The `demo_data` stage's command line (dvc.yaml); a user error is one line and exit code 2."""
    return stage_main(__doc__, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
