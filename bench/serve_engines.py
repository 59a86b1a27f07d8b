"""Keras vs ONNX Runtime, alone and behind the service, in one run on one machine (issue 19).

    python bench/serve_engines.py [--arch densenet121] [--sizes 224 64] [--repeats 40]

For each image size, one untrained `--arch` model (pipeline.backbones, from scratch: the weights
do not change the cost) is released and exported (pipeline.export), then timed on the same
synthetic scan, one image at a time (latency p50 / p99) and in batches of 32 (images/s):

    keras predict   model.predict(x)                       (Keras' dataset machinery per call)
    keras call      model(x, training=False)               (the direct call)
    keras engine    KerasEngine.probabilities (predict_on_batch, what the service runs)
    onnxruntime     InferenceSession.run on model.onnx     (what OnnxEngine runs)
    service/keras   POST /predict of the PNG to `python -m pipeline.serve --engine keras`
    service/onnx    the same with `--engine onnx`          (loopback, one client; no heat maps)

and prints the ratios the issue asks for: the service's p50 over its own engine's p50 (target at
most 1.15), ONNX Runtime's speed over the Keras direct call (target at least 1.5 on CPU), and the
installed size of each serving environment (.venv-azureml-server, .venv-azureml-onnx). The service
throughput is 32 requests from two clients (the service runs two inferences at once). Never run as
a test: the figures depend on the machine.
"""

from __future__ import annotations

import argparse
import http.client
import io
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
BATCH = 32
ENVIRONMENTS = {"keras": ".venv-azureml-server", "onnx": ".venv-azureml-onnx"}


def scan_png(size: int) -> bytes:
    """A synthetic scan at twice the model's size (the engine fits it, as for an upload)."""
    from pipeline import synthetic

    image, _ = synthetic.render_case("malignant", synthetic.case_rng(0, "malignant", 0), 2 * size)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def timed(call: Callable[[], object], repeats: int) -> np.ndarray:
    """Milliseconds of `repeats` calls after three warm-up calls."""
    for _ in range(3):
        call()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1000)
    return np.asarray(times)


def figures(one: np.ndarray, batch: np.ndarray | None) -> dict[str, float]:
    """Median and 99th percentile of one-image times (ms), and batch-of-32 throughput (images/s)."""
    result = {"p50": float(np.percentile(one, 50)), "p99": float(np.percentile(one, 99))}
    result["images_s"] = BATCH / (float(np.median(batch)) / 1000) if batch is not None else np.nan
    return result


def release(arch: str, size: int, folder: Path) -> Path:
    """An untrained model released with a rule and exported to ONNX, as select + export would."""
    from pipeline.backbones import build_classifier
    from pipeline.export import export_release
    from pipeline.serving.release import write_release
    from pipeline.serving.rule import DecisionRule

    classes = ("benign", "malignant", "normal")
    folder.mkdir(parents=True)
    build_classifier(arch, size, classes).save(folder / "source.keras")
    rule = DecisionRule(classes, "malignant", 0.5, None, "benchmark", "benchmark")
    write_release(folder, folder / "source.keras", rule, {"arch": arch, "synthetic_data": True})
    (folder / "source.keras").unlink()
    started = time.perf_counter()
    export_release(folder)
    print(f"  export to ONNX: {time.perf_counter() - started:.0f} s", flush=True)
    return folder


def in_process(folder: Path, png: bytes, repeats: int, batches: int) -> dict[str, dict]:
    """Keras predict, direct call, engine; ONNX Runtime alone: one image and batches of 32."""
    from pipeline.serving.classifier import load_classifier
    from pipeline.serving.uploads import decode_upload

    keras_engine = load_classifier(folder).engine
    onnx_engine = load_classifier(folder, engine="onnx").engine
    one = keras_engine.prepare(decode_upload(png))[None]
    many = np.repeat(one, BATCH, axis=0)
    model, session, name = keras_engine.model, onnx_engine.session, onnx_engine.input_name
    calls = {
        "keras predict": lambda x: model.predict(x, verbose=0),
        "keras call": lambda x: np.asarray(model(x, training=False)),
        "keras engine": keras_engine.probabilities,
        "onnxruntime": lambda x: session.run(None, {name: x}),
    }
    return {
        label: figures(
            timed(lambda c=call: c(one), repeats), timed(lambda c=call: c(many), batches)
        )
        for label, call in calls.items()
    }


def post(connection: http.client.HTTPConnection, png: bytes) -> None:
    """POST one PNG to /predict and fail on anything but 200, so a broken server is not timed."""
    connection.request(
        "POST", "/predict", body=png, headers={"Content-Type": "application/octet-stream"}
    )
    response = connection.getresponse()
    body = response.read()
    if response.status != 200:
        raise SystemExit(f"service answered {response.status}: {body[:200]!r}")


def through_service(folder: Path, engine: str, png: bytes, repeats: int) -> dict[str, float]:
    """One client's latency, then 32 requests from two clients (images/s)."""
    from serve_latency import free_port, start_server  # bench/ is on the path when run

    port = free_port()
    server = start_server(str(folder), port, ("--engine", engine, "--no-log"))
    try:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        one = timed(lambda: post(connection, png), repeats)
        connections = [http.client.HTTPConnection("127.0.0.1", port, timeout=120) for _ in "ab"]

        def half(c: http.client.HTTPConnection) -> None:
            for _ in range(BATCH // 2):
                post(c, png)

        started = time.perf_counter()
        threads = [threading.Thread(target=half, args=(c,)) for c in connections]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        result = figures(one, None)
        result["images_s"] = BATCH / (time.perf_counter() - started)
        return result
    finally:
        server.terminate()
        server.wait(timeout=30)


def environment_sizes() -> dict[str, float | None]:
    """Installed size (MB) of each serving environment's site-packages, when it is built."""
    sizes = {}
    for engine, venv in ENVIRONMENTS.items():
        found = list((ROOT / venv / "lib").glob("python*/site-packages"))
        if not found:
            sizes[engine] = None
            continue
        files = (p for p in found[0].rglob("*") if p.is_file() and not p.is_symlink())
        sizes[engine] = sum(p.stat().st_size for p in files) / 1e6
    return sizes


def report(size: int, rows: dict[str, dict]) -> None:
    """Print one image size's table, and each engine's own cost against the service's."""
    print(f"\n{size} px: {'':16} {'p50 ms':>9} {'p99 ms':>9} {'batch-32 img/s':>15}")
    for label, row in rows.items():
        print(f"  {label:22} {row['p50']:9.2f} {row['p99']:9.2f} {row['images_s']:15.1f}")
    own = {"keras": rows["keras engine"], "onnx": rows["onnxruntime"]}
    for engine, engine_row in own.items():
        service = rows[f"service/{engine}"]
        print(
            f"  service/{engine} over its engine, p50: {service['p50'] / engine_row['p50']:.2f} "
            f"(+{service['p50'] - engine_row['p50']:.1f} ms; target <= 1.15)"
        )
    call, ort = rows["keras call"], rows["onnxruntime"]
    print(
        f"  onnxruntime over keras call: {call['p50'] / ort['p50']:.2f}x one image, "
        f"{ort['images_s'] / call['images_s']:.2f}x batch of 32 (target >= 1.5)"
    )


def main(argv: list[str] | None = None) -> int:
    """Measure the Keras and ONNX engines, alone and behind the service, at each size."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="densenet121", choices=["densenet121", "resnet50"])
    p.add_argument("--sizes", type=int, nargs="+", default=[224, 64])
    p.add_argument("--repeats", type=int, default=40, help="one-image calls per measurement")
    p.add_argument("--batches", type=int, default=5, help="batch-of-32 calls per measurement")
    args = p.parse_args(argv)
    print(f"{args.arch}, {os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d')}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            print(f"{size} px: releasing and exporting {args.arch}", flush=True)
            folder = release(args.arch, size, Path(tmp) / str(size))
            png = scan_png(size)
            rows = in_process(folder, png, args.repeats, args.batches)
            for engine in ("keras", "onnx"):
                rows[f"service/{engine}"] = through_service(folder, engine, png, args.repeats)
            report(size, rows)
    sizes = environment_sizes()
    print("\nserving environment, installed (site-packages):")
    for engine, mb in sizes.items():
        shown = (
            "not built (make azure-server-env / azure-onnx-env)" if mb is None else f"{mb:.0f} MB"
        )
        print(f"  {engine:6} {ENVIRONMENTS[engine]:22} {shown}")
    if all(sizes.values()):
        print(f"  onnx / keras: {sizes['onnx'] / sizes['keras']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
