"""Load test of the classification service on loopback, against raw `model.predict` in the same run.

    python bench/serve_latency.py [--model SOURCE] [--seconds 30] [--clients 8]

Starts `python -m pipeline.serve` in a subprocess (so the load generator does not share its GIL),
then in this order, on the same image:
1. raw: `model.predict` on the prepared image in this process, with the service idle (p50);
2. sequential: one client posting the image for a third of `--seconds` (per-request overhead);
3. loaded: `--clients` concurrent keep-alive clients for `--seconds` (p50, p99, throughput, errors).
Prints the service p50 over raw p50 for (2) and (3), and for (3) also the time per image under load
(1 / throughput) over raw p50: on a CPU-bound box, concurrent requests queue, so the loaded p50
grows with the client count while the time per image shows what the service adds.
Without `--model` it builds an untrained ResNet50 at 64 px (the demo's size). Never run as a test.
"""

from __future__ import annotations

import argparse
import http.client
import io
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

CLASSES = ["benign", "malignant", "normal"]


def demo_png() -> bytes:
    """A synthetic 256-pixel scan as PNG bytes: a realistic upload that needs no data."""
    from pipeline import synthetic

    image, _ = synthetic.render_case("malignant", synthetic.case_rng(0, "malignant", 0), 256)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def free_port() -> int:
    """A port the OS says is free on loopback, for the server under test."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(model: str, port: int, extra: tuple[str, ...] = ()) -> subprocess.Popen:
    """`python -m pipeline.serve` (no heat maps, plus `extra` options), once /health answers."""
    command = [
        sys.executable,
        "-m",
        "pipeline.serve",
        "--model",
        model,
        "--port",
        str(port),
        "--no-heatmaps",
        *extra,
    ]
    return start_process(command, port)


def start_process(command: list[str], port: int) -> subprocess.Popen:
    """Run `command`, a server on loopback `port`, and return once its /health answers 200."""
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"server exited: {server.stderr.read()[-2000:]}")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            connection.request("GET", "/health")
            if connection.getresponse().status == 200:
                return server
        except OSError:
            time.sleep(0.5)
    server.kill()
    raise SystemExit("server did not answer /health within 180 s")


def post_loop(port: int, body: bytes, until: float, latencies: list, errors: list) -> None:
    """One client: POST `body` until `until`, recording each latency (s) or error."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    headers = {"Content-Type": "application/octet-stream"}
    while time.monotonic() < until:
        started = time.perf_counter()
        try:
            connection.request("POST", "/predict", body=body, headers=headers)
            response = connection.getresponse()
            payload = response.read()
            ok = response.status == 200 and b'"class"' in payload
        except OSError as exc:
            ok = False
            payload = repr(exc).encode()
            connection.close()
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        elapsed = time.perf_counter() - started
        (latencies if ok else errors).append(elapsed if ok else payload[:200])
    connection.close()


def load(port: int, body: bytes, clients: int, seconds: float) -> dict:
    """Latency percentiles and throughput of `clients` concurrent clients for `seconds`."""
    latencies: list[float] = []
    errors: list = []
    until = time.monotonic() + seconds
    started = time.perf_counter()
    threads = [
        threading.Thread(target=post_loop, args=(port, body, until, latencies, errors))
        for _ in range(clients)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=seconds + 120)
    wall = time.perf_counter() - started
    ms = np.asarray(latencies) * 1000
    return {
        "clients": clients,
        "requests": len(latencies),
        "errors": len(errors),
        "first_error": errors[0].decode(errors="replace") if errors else None,
        "p50_ms": float(np.percentile(ms, 50)) if len(ms) else float("nan"),
        "p99_ms": float(np.percentile(ms, 99)) if len(ms) else float("nan"),
        "throughput_rps": len(latencies) / wall,
    }


def raw_predict_ms(model_source: str, body: bytes, runs: int) -> tuple[float, float]:
    """p50 of `model.predict` (and of `predict_on_batch`) on the prepared image, in this process."""
    from pipeline.serving.classifier import load_classifier
    from pipeline.serving.uploads import decode_upload

    classifier = load_classifier(model_source)
    batch = classifier.engine.prepare(decode_upload(body))[None]
    model = classifier.engine.model
    results = []
    for call in (
        lambda: model.predict(batch, verbose=0),
        lambda: model.predict_on_batch(batch),
    ):
        for _ in range(5):
            call()
        times = []
        for _ in range(runs):
            started = time.perf_counter()
            call()
            times.append(time.perf_counter() - started)
        results.append(float(np.median(times)) * 1000)
    return results[0], results[1]


def main() -> int:
    """Start the service on loopback, load it, and compare with the raw model.predict."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", help="a serve --model source (default: a fresh untrained ResNet50)"
    )
    parser.add_argument("--size", type=int, default=64, help="input size of the default model")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--raw-runs", type=int, default=50)
    args = parser.parse_args()

    tmp = tempfile.TemporaryDirectory()
    model = args.model
    if model is None:
        from pipeline.backbones import build_classifier
        from pipeline.serving.release import write_release
        from pipeline.serving.rule import DecisionRule

        path = Path(tmp.name) / "untrained.keras"
        build_classifier("resnet50", args.size, CLASSES).save(path)
        folder = Path(tmp.name) / "release"
        folder.mkdir()
        write_release(folder, path, DecisionRule(tuple(CLASSES)), {"arch": "resnet50"})
        model = str(folder)
    body = demo_png()
    port = free_port()
    server = start_server(model, port)
    try:
        raw_ms, on_batch_ms = raw_predict_ms(model, body, args.raw_runs)
        load(port, body, 1, 2.0)  # warm the connection path
        sequential = load(port, body, 1, max(5.0, args.seconds / 3))
        loaded = load(port, body, args.clients, args.seconds)
    finally:
        server.terminate()
        server.wait(timeout=30)
        tmp.cleanup()

    per_image_ms = 1000 / loaded["throughput_rps"] if loaded["throughput_rps"] else float("nan")
    print(
        f"model: {model if args.model else f'untrained resnet50 at {args.size} px'}; "
        f"image: 256x256 PNG ({len(body)} bytes); cpu cores: {os.cpu_count()}"
    )
    print(f"raw model.predict p50: {raw_ms:.2f} ms   (predict_on_batch p50: {on_batch_ms:.2f} ms)")
    for name, r in (("sequential", sequential), ("loaded", loaded)):
        print(
            f"{name:>10}: {r['clients']} client(s), {r['requests']} requests, "
            f"errors {r['errors']}, "
            f"p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms, {r['throughput_rps']:.1f} req/s"
        )
        if r["first_error"]:
            print(f"            first error: {r['first_error']}")
    print(
        "ratio service p50 / raw model.predict p50, 1 client:   "
        f"{sequential['p50_ms'] / raw_ms:.3f}"
    )
    print(
        f"ratio service p50 / raw predict_on_batch p50, 1 client: "
        f"{sequential['p50_ms'] / on_batch_ms:.3f}  (the call the service makes)"
    )
    print(
        f"ratio service p50 / raw model.predict p50, {args.clients} clients: "
        f"{loaded['p50_ms'] / raw_ms:.3f}  (includes queueing behind the other clients)"
    )
    print(f"ratio time per image under load (1/throughput) / raw p50: {per_image_ms / raw_ms:.3f}")
    overhead = sequential["p50_ms"] / raw_ms - 1
    verdict = (
        "PASS"
        if loaded["errors"] == 0 and sequential["errors"] == 0 and overhead <= 0.15
        else "FAIL"
    )
    print(f"target (0 errors, <= 15% per-request overhead): {verdict} ({100 * overhead:+.1f}%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
