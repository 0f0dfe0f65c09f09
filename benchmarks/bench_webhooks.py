"""Webhook receiver latency on loopback: ours (verify + redact + fsynced landing) against a
bare stdlib handler that reads the body and answers 200 (no checks, nothing written).

Both servers get the same sequence of signed ~1 KB events over one keep-alive connection,
one request at a time; we report p50 and p99 per request. They agree when every request got
200 and our landing zone holds exactly one file per event.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_webhooks.py [--small]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import subprocess
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from benchmarks.common import Result, record
from workbench.config import load_settings
from workbench.store import atomic_write_bytes
from workbench.webhooks import compute_signature, make_server

SECRET = "whsec_bench"


class _Bare(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # as ours: no 40 ms delayed-ACK stall

    def log_message(self, *args: object) -> None:
        pass

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers["Content-Length"]))
        body = b'{"received": true}'
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def _events(n: int) -> list[bytes]:
    now = int(time.time())
    out = []
    for i in range(n):
        event = {
            "id": f"evt_bench{i:08d}",
            "object": "event",
            "type": "invoice.payment_failed",
            "created": now,
            "api_version": "2020-08-27",
            "data": {
                "object": {
                    "id": f"in_bench{i:08d}",
                    "object": "invoice",
                    "amount_due": 4900,
                    "currency": "usd",
                    "customer": f"cus_bench{i % 97:05d}",
                    "attempt_count": 1 + i % 4,
                    "status": "open",
                    "lines": {"data": [{"id": f"il_{i}", "amount": 4900}]},
                }
            },
            "pad": "x" * 600,
        }
        out.append(json.dumps(event).encode())
    return out


def _latencies(port: int, bodies: list[bytes]) -> tuple[list[float], list[int]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    times, statuses = [], []
    for body in bodies:
        t = int(time.time())
        headers = {
            "Stripe-Signature": f"t={t},v1={compute_signature(SECRET, t, body)}",
            "Content-Type": "application/json",
        }
        start = time.perf_counter()
        conn.request("POST", "/webhooks/stripe", body=body, headers=headers)
        resp = conn.getresponse()
        resp.read()
        times.append(time.perf_counter() - start)
        statuses.append(resp.status)
    conn.close()
    return times, statuses


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def _filesystem(path: Path) -> str:
    try:
        out = subprocess.run(["df", "-T", str(path)], capture_output=True, text=True, check=True)
        return out.stdout.splitlines()[-1].split()[1]
    except (OSError, subprocess.CalledProcessError, IndexError):
        return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="a quick smoke run")
    args = parser.parse_args()
    n = 60 if args.small else 600
    bodies = _events(n)
    warm = _events(20)

    with tempfile.TemporaryDirectory(
        prefix="bench_webhooks_", dir=os.environ.get("BENCH_TMP")
    ) as tmp:
        settings = load_settings(root=Path(tmp), overrides={"data_dir": str(Path(tmp) / "data")})
        ours = make_server(0, settings=settings, secrets=[SECRET])
        bare = ThreadingHTTPServer(("127.0.0.1", 0), _Bare)
        for server in (ours, bare):
            threading.Thread(
                target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
            ).start()
        try:
            _latencies(ours.server_address[1], [w.replace(b"bench", b"warm0") for w in warm])
            _latencies(bare.server_address[1], warm)
            ours_t, ours_status = _latencies(ours.server_address[1], bodies)
            bare_t, bare_status = _latencies(bare.server_address[1], bodies)
            landed = [p for p in ours.receiver.root.rglob("evt_bench*.json")]
            fs = _filesystem(ours.receiver.root)
            # what the durable write alone costs on this disk (two fsyncs: file and folder)
            writes = []
            for i, body in enumerate(bodies[:50]):
                start = time.perf_counter()
                atomic_write_bytes(Path(tmp) / "fsync" / f"{i}.json", body)
                writes.append(time.perf_counter() - start)
        finally:
            for server in (ours, bare):
                server.shutdown()
                server.server_close()

    agree = set(ours_status) == {200} and set(bare_status) == {200} and len(landed) == n
    p50, p99 = statistics.median(ours_t), _pct(ours_t, 0.99)
    b50, b99 = statistics.median(bare_t), _pct(bare_t, 0.99)
    result = Result(
        benchmark="webhooks",
        workload=f"{n} signed ~1 KB events, one at a time, keep-alive loopback",
        ours_s=p50,
        baseline="stdlib handler, no verification, nothing written",
        baseline_s=b50,
        ratio=p50 / b50 if b50 else None,
        goal="p99 < 50 ms per event (verified and fsynced before the 200)",
        met=p99 < 0.050,
        agree=agree,
        extra={
            "ours_p50_ms": p50 * 1e3,
            "ours_p99_ms": p99 * 1e3,
            "baseline_p50_ms": b50 * 1e3,
            "baseline_p99_ms": b99 * 1e3,
            "landing_filesystem": fs,
            "small": args.small,
        },
    )
    path = record([result], name="webhooks")
    print(
        f"ours p50 {p50 * 1e3:.2f} ms, p99 {p99 * 1e3:.2f} ms; bare p50 {b50 * 1e3:.2f} ms, "
        f"p99 {b99 * 1e3:.2f} ms; fsynced write alone p50 {statistics.median(writes) * 1e3:.2f} ms "
        f"on {fs}; agree={agree} -> {path}"
    )


if __name__ == "__main__":
    main()
