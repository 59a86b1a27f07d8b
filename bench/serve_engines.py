"""Keras vs ONNX Runtime (float and INT8), alone and behind the service, in one run (issues 19, 27).

    python bench/serve_engines.py [--arch densenet121] [--sizes 224 64] [--repeats 40]

For each image size, one untrained `--arch` model (pipeline.backbones, from scratch: the weights
do not change the cost) is released, exported (pipeline.export) and quantized to INT8
(pipeline.quantize, calibrated on synthetic scans other than the timed one), then timed on the
same synthetic scan, one image at a time (latency p50 / p99) and in batches of 32 (images/s):

    keras predict      model.predict(x)                    (Keras' dataset machinery per call)
    keras call         model(x, training=False)            (the direct call)
    keras engine       KerasEngine.probabilities (predict_on_batch, what the service runs)
    onnxruntime        OnnxEngine on model.onnx: InferenceSession.run, a batch in chunks of
                       engine.CHUNK_PIXELS (what every surface runs)
    onnxruntime int8   the same on model.int8.onnx
    service/keras      POST /predict of the PNG to `python -m pipeline.serve --engine keras`
    service/onnx       the same with `--engine onnx`       (loopback, one client; no heat maps)
    service/onnx-int8  the same with `--engine onnx-int8`

then where one ONNX request's time goes: each step in process (median ms: decode the PNG, fit it
to the model's input, the forward pass, the rule's answer, the prediction-log row, the JSON), and
request by request through the service (`--no-log`): the time at the client, the service's own
`decode_ms` (decode and fit) and `inference_ms` (forward pass and answer) of that request, and the
rest (HTTP, the framework, the thread hop, the JSON), and the least a request could add with the
same pixels: the same upload posted by the same client to a bare ASGI app under uvicorn (reads
the body, answers a line of JSON; no framework, no access log) plus the decode and the fit. Then
the ratios the issues ask for: INT8 over float ONNX Runtime (target at least 1.8 at 224 px),
each service's p50 over its own engine's (target at most 1.10 for ONNX; also request by request,
over the forward pass the service timed inside that request, which a shared machine's changing
load cannot tilt), ONNX Runtime over the Keras direct call, and the installed size of each
serving environment (.venv-azureml-server, .venv-azureml-onnx). The service throughput is 32
requests from two clients (the service runs two inferences at once). Never run as a test: the
figures depend on the machine (INT8's on VNNI above all).
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import io
import json
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
ENGINE_ROWS = {"keras": "keras engine", "onnx": "onnxruntime", "onnx-int8": "onnxruntime int8"}
CALIBRATION_SCANS = 24


def scan_png(size: int) -> bytes:
    """A synthetic scan at twice the model's size (the engine fits it, as for an upload)."""
    from pipeline import synthetic

    image, _ = synthetic.render_case("malignant", synthetic.case_rng(0, "malignant", 0), 2 * size)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def calibration_scans(size: int) -> list[np.ndarray]:
    """Synthetic scans of every class for INT8's ranges (never the timed scan, seed 0)."""
    from pipeline import synthetic

    return [
        synthetic.render_case(label, synthetic.case_rng(1, label, n), size)[0]
        for label in synthetic.CLASSES
        for n in range(CALIBRATION_SCANS // len(synthetic.CLASSES))
    ]


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
    from pipeline.quantize import quantize
    from pipeline.serving.classifier import load_classifier
    from pipeline.serving.release import INT8_FILE, ONNX_FILE

    started = time.perf_counter()
    engine = load_classifier(folder, engine="onnx").engine
    scans = [engine.prepare(scan) for scan in calibration_scans(size)]
    quantize(folder / ONNX_FILE, folder / INT8_FILE, scans)
    print(f"  INT8 quantization: {time.perf_counter() - started:.0f} s", flush=True)
    return folder


def in_process(
    folder: Path, png: bytes, repeats: int, batches: int, keras: bool = True
) -> dict[str, dict]:
    """Keras predict, direct call, engine; ONNX Runtime alone: one image and batches of 32."""
    from pipeline.serving.classifier import load_classifier
    from pipeline.serving.uploads import decode_upload

    keras_engine = load_classifier(folder).engine
    onnx_engine = load_classifier(folder, engine="onnx").engine
    int8_engine = load_classifier(folder, engine="onnx-int8").engine
    one = keras_engine.prepare(decode_upload(png))[None]
    many = np.repeat(one, BATCH, axis=0)
    model = keras_engine.model
    calls = {
        "keras predict": lambda x: model.predict(x, verbose=0),
        "keras call": lambda x: np.asarray(model(x, training=False)),
        "keras engine": keras_engine.probabilities,
        "onnxruntime": onnx_engine.pooled_and_probabilities,
        "onnxruntime int8": int8_engine.pooled_and_probabilities,
    }
    if not keras:
        calls = {k: v for k, v in calls.items() if not k.startswith("keras")}
    ones = in_turn({k: lambda c=call: c(one) for k, call in calls.items()}, repeats)
    manys = in_turn({k: lambda c=call: c(many) for k, call in calls.items()}, batches)
    return {label: figures(ones[label], manys[label]) for label in calls}


def in_turn(calls: dict[str, Callable[[], object]], repeats: int) -> dict[str, np.ndarray]:
    """Milliseconds of `repeats` rounds in which each call runs once in turn (after three warm-up
    rounds): a shared machine's load, which changes from one second to the next, then falls on
    every call alike, and their ratios (INT8 over float) hold within one run."""
    times: dict[str, list[float]] = {label: [] for label in calls}
    for round_ in range(3 + repeats):
        for label, call in calls.items():
            started = time.perf_counter()
            call()
            if round_ >= 3:
                times[label].append((time.perf_counter() - started) * 1000)
    return {label: np.asarray(t) for label, t in times.items()}


def stages(folder: Path, engine: str, png: bytes, repeats: int) -> dict[str, float]:
    """Median ms of each step of one request in process, as pipeline.serving.app.classify runs
    them (the prediction log's row included: `make serve` keeps the log)."""
    from pipeline.serving.classifier import load_classifier
    from pipeline.serving.predlog import record
    from pipeline.serving.uploads import decode_upload

    classifier = load_classifier(folder, engine=engine)
    image = decode_upload(png)
    batch = classifier.engine.prepare(image)[None]
    proba, scores = classifier.forward(batch)
    answer = classifier.answer_batch(batch)[0]
    steps: dict[str, Callable[[], object]] = {
        "decode": lambda: decode_upload(png),
        "fit": lambda: classifier.engine.prepare(image),
        "forward": lambda: classifier.forward(batch),
        "answer": lambda: classifier.describe(proba[0], None if scores is None else scores[0]),
        "log row": lambda: record(answer, batch[0], image.width, image.height, dt.datetime.now()),
        "json": lambda: json.dumps(answer).encode(),
    }
    return {step: float(np.median(timed(call, repeats))) for step, call in steps.items()}


def post(connection: http.client.HTTPConnection, png: bytes) -> dict:
    """POST one PNG to /predict and fail on anything but 200, so a broken server is not timed."""
    connection.request(
        "POST", "/predict", body=png, headers={"Content-Type": "application/octet-stream"}
    )
    response = connection.getresponse()
    body = response.read()
    if response.status != 200:
        raise SystemExit(f"service answered {response.status}: {body[:200]!r}")
    return json.loads(body)


def through_service(folder: Path, engine: str, png: bytes, repeats: int) -> dict[str, float]:
    """One client's latency, then 32 requests from two clients (images/s).

    `per_request`: the median over requests of each one's time at the client over the time its
    forward pass took inside the service (the answer's `inference_ms`: the engine, the rule's
    answer), both from the same request, so a shared machine's load, which moves every figure
    from one second to the next, falls on both alike."""
    from serve_latency import free_port, start_server  # bench/ is on the path when run

    port = free_port()
    server = start_server(str(folder), port, ("--engine", engine, "--no-log"))
    try:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        for _ in range(3):
            post(connection, png)
        one, ratios, decode, forward = [], [], [], []
        for _ in range(repeats):
            started = time.perf_counter()
            answer = post(connection, png)
            one.append((time.perf_counter() - started) * 1000)
            ratios.append(one[-1] / answer["inference_ms"])
            decode.append(answer["decode_ms"])
            forward.append(answer["inference_ms"])
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
        result = figures(np.asarray(one), None)
        result["images_s"] = BATCH / (time.perf_counter() - started)
        result["per_request"] = float(np.median(ratios))
        rest = np.asarray(one) - np.asarray(decode) - np.asarray(forward)
        result["split"] = {
            "client": float(np.median(one)),
            "decode+fit": float(np.median(decode)),
            "forward+answer": float(np.median(forward)),
            "HTTP, framework, JSON": float(np.median(rest)),
        }
        return result
    finally:
        server.terminate()
        server.wait(timeout=30)


# A bare ASGI app: what a loopback request of the same upload costs with no framework at all.
BARE_APP = """
import sys, uvicorn
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    size, more = 0, True
    while more:
        message = await receive()
        size += len(message.get("body", b""))
        more = message.get("more_body", False)
    body = b'{"bytes": %d}' % size
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
"""


def bare_round_trip(png: bytes, repeats: int) -> float:
    """Median ms at the client of POSTing `png` to BARE_APP (uvicorn's own choice of parser and
    loop, as `make serve`'s): the floor under "HTTP, framework, JSON"."""
    from serve_latency import free_port, start_process  # bench/ is on the path when run

    port = free_port()
    server = start_process([sys.executable, "-c", BARE_APP, str(port)], port)
    try:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        return float(np.median(timed(lambda: post(connection, png), repeats)))
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


def report(size: int, rows: dict[str, dict], split: dict[str, float], bare: float) -> None:
    """Print one image size's table, the ONNX request's split, its floor and the ratios."""
    print(f"\n{size} px: {'':19} {'p50 ms':>9} {'p99 ms':>9} {'batch-32 img/s':>15}")
    for label, row in rows.items():
        print(f"  {label:25} {row['p50']:9.2f} {row['p99']:9.2f} {row['images_s']:15.1f}")
    shown = ", ".join(f"{step} {ms:.2f}" for step, ms in split.items())
    print(f"  one ONNX request's steps in process, median ms: {shown}")
    within = rows["service/onnx"]["split"]
    print(
        "  service/onnx request by request, median ms: "
        + ", ".join(f"{step} {ms:.2f}" for step, ms in within.items())
    )
    least = bare + split["decode"] + split["fit"]
    print(
        f"  the least a request could add with the same pixels: bare uvicorn round trip "
        f"{bare:.2f} + decode {split['decode']:.2f} + fit {split['fit']:.2f} = {least:.2f} ms; "
        f"service/onnx adds {within['client'] - within['forward+answer']:.2f} ms; 1.10 leaves "
        f"{0.1 * within['forward+answer']:.2f} ms"
    )
    for engine, label in ENGINE_ROWS.items():
        if label not in rows:
            continue
        own, served = rows[label]["p50"], rows[f"service/{engine}"]["p50"]
        per_request = rows[f"service/{engine}"]["per_request"]
        print(
            f"  service/{engine} over its engine, p50: {served / own:.2f} "
            f"(+{served - own:.1f} ms; target <= 1.10); request by request, over its own "
            f"forward pass: {per_request:.2f}"
        )
    ort, int8 = rows["onnxruntime"], rows["onnxruntime int8"]
    print(
        f"  onnxruntime int8 over float: {ort['p50'] / int8['p50']:.2f}x one image, "
        f"{int8['images_s'] / ort['images_s']:.2f}x batch of 32 (target >= 1.8)"
    )
    if "keras call" in rows:
        call = rows["keras call"]
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
    p.add_argument("--no-keras", action="store_true", help="ONNX Runtime rows only (faster)")
    args = p.parse_args(argv)
    print(f"{args.arch}, {os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d')}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            print(f"{size} px: releasing and exporting {args.arch}", flush=True)
            folder = release(args.arch, size, Path(tmp) / str(size))
            png = scan_png(size)
            rows = in_process(folder, png, args.repeats, args.batches, not args.no_keras)
            split = stages(folder, "onnx", png, args.repeats)
            for engine in [e for e in ENGINE_ROWS if e != "keras" or not args.no_keras]:
                rows[f"service/{engine}"] = through_service(folder, engine, png, args.repeats)
            report(size, rows, split, bare_round_trip(png, args.repeats))
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
