"""Load test of the HTTP server: N requests from C concurrent clients, latency and throughput as JSON.

    python benchmarks/serve_load.py RUN_DIR [--requests 1000] [--concurrency 20] [--out result.json]

Starts `peapod serve RUN_DIR` on a free loopback port (or uses `--url http://127.0.0.1:PORT` of a
server already running on this machine), sends a fixed, seeded mix of requests (default 70% /recommend
for a known user, 10% /recommend from a history (cold start), 20% /explain), and reports: errors,
latency p50/p90/p99/max (ms, whole HTTP round trip as the client sees it), requests per second over the
whole run, per-endpoint latencies, and the server's micro-batching counters (mean batch size). A few
warm-up requests are sent first and not counted. Exit status 1 when any request failed.

Only loopback addresses are contacted. Everything is bounded: request count, concurrency, per-request
timeout, and server start-up time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

import httpx

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def id_maps(run_dir: Path) -> tuple[list[str], list[str]]:
    """Raw user and item ids of the model (from its id_maps.json; no torch needed)."""
    for model_dir in (run_dir / "best", run_dir):
        f = model_dir / "id_maps.json"
        if f.is_file():
            maps = json.loads(f.read_text(encoding="utf-8"))
            return [str(u) for u in maps["user_ids"]], [str(i) for i in maps["item_ids"]]
    raise SystemExit(f"error: no id_maps.json under {run_dir} (a run directory or a model directory)")


def plan(n: int, users: list[str], items: list[str], k: int, seed: int, mix: tuple[float, float, float]) -> list[tuple[str, dict]]:
    """A seeded list of (path, body): known-user recommend, history recommend, explain in ratio `mix`."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        x = rng.random()
        if x < mix[0]:
            out.append(("/recommend", {"user": rng.choice(users), "k": k}))
        elif x < mix[0] + mix[1]:
            out.append(("/recommend", {"history": rng.sample(items, rng.randint(1, 10)), "k": k}))
        else:
            out.append(("/explain", {"user": rng.choice(users), "item": rng.choice(items)}))
    return out


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    if not values:
        return float("nan")
    s = sorted(values)
    rank = max(1, min(len(s), int(-(-q * len(s) // 100))))
    return s[rank - 1]


def summarize(latencies: list[float]) -> dict:
    ms = [x * 1000.0 for x in latencies]
    return {
        "count": len(ms),
        "p50_ms": round(percentile(ms, 50), 2),
        "p90_ms": round(percentile(ms, 90), 2),
        "p99_ms": round(percentile(ms, 99), 2),
        "max_ms": round(max(ms), 2) if ms else None,
        "mean_ms": round(statistics.fmean(ms), 2) if ms else None,
    }


async def run_load(base: str, requests: list[tuple[str, dict]], concurrency: int, timeout: float) -> dict:
    queue: asyncio.Queue = asyncio.Queue()
    for j, r in enumerate(requests):
        queue.put_nowait((j, r))
    latencies: list[float | None] = [None] * len(requests)
    errors: list[dict] = []

    async def client_loop(client: httpx.AsyncClient) -> None:
        while True:
            try:
                j, (path, body) = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            t = time.perf_counter()
            try:
                r = await client.post(path, json=body)
                ok = r.status_code == 200
                detail = None if ok else f"HTTP {r.status_code}: {r.text[:200]}"
            except httpx.HTTPError as e:
                ok, detail = False, f"{type(e).__name__}: {e}"
            latencies[j] = time.perf_counter() - t
            if not ok:
                errors.append({"request": j, "path": path, "error": detail})

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    t0 = time.perf_counter()
    async with httpx.AsyncClient(base_url=base, timeout=timeout, limits=limits) as client:
        await asyncio.gather(*(client_loop(client) for _ in range(concurrency)))
    wall = time.perf_counter() - t0
    done = [x for x in latencies if x is not None]
    by_path: dict[str, list[float]] = {}
    for (path, _), lat in zip(requests, latencies):
        if lat is not None:
            by_path.setdefault(path, []).append(lat)
    return {
        "wall_s": round(wall, 3),
        "requests_per_s": round(len(done) / wall, 2) if wall > 0 else None,
        "errors": len(errors),
        "error_samples": errors[:5],
        "latency": summarize(done),
        "by_endpoint": {p: summarize(v) for p, v in sorted(by_path.items())},
    }


def wait_for_health(base: str, proc: subprocess.Popen | None, timeout: float, log: Path | None) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"error: server exited with {proc.returncode}\n{log.read_text() if log else ''}")
        try:
            r = httpx.get(f"{base}/health", timeout=2)
            if r.status_code == 200:
                return r.json()
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"error: no /health answer from {base} within {timeout:.0f}s")
        time.sleep(0.3)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir", type=Path, help="trained run directory (or model directory) to serve")
    ap.add_argument("--requests", type=int, default=1000, help="measured requests (1..100000)")
    ap.add_argument("--concurrency", type=int, default=20, help="concurrent clients (1..256)")
    ap.add_argument("--k", type=int, default=10, help="k of /recommend requests")
    ap.add_argument("--mix", default="0.7,0.1,0.2", help="fractions: known-user recommend, history recommend, explain")
    ap.add_argument("--warmup", type=int, default=20, help="unmeasured requests sent first")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=120.0, help="per-request timeout (s)")
    ap.add_argument("--startup-timeout", type=float, default=300.0, help="how long to wait for the server (s)")
    ap.add_argument("--url", default=None, help="use this running server (loopback only) instead of starting one")
    ap.add_argument("--device", default="cpu", help="device of the started server")
    ap.add_argument("--max-batch", type=int, default=32, help="server --max-batch")
    ap.add_argument("--max-wait-ms", type=float, default=5.0, help="server --max-wait-ms")
    ap.add_argument("--out", type=Path, default=None, help="also write the JSON result here")
    args = ap.parse_args(argv)
    if not 1 <= args.requests <= 100_000 or not 1 <= args.concurrency <= 256 or args.warmup < 0:
        ap.error("--requests must be in 1..100000, --concurrency in 1..256, --warmup >= 0")
    mix = tuple(float(x) for x in args.mix.split(","))
    if len(mix) != 3 or any(x < 0 for x in mix) or abs(sum(mix) - 1.0) > 1e-6:
        ap.error("--mix must be three non-negative fractions summing to 1")

    users, items = id_maps(args.run_dir)
    proc, log = None, None
    if args.url:
        host = urlparse(args.url).hostname
        if host not in LOOPBACK:
            ap.error(f"--url must be a loopback address ({', '.join(sorted(LOOPBACK))}); got {host!r}")
        base = args.url.rstrip("/")
    else:
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        log = Path(os.environ.get("TMPDIR", "/tmp")) / f"serve_load_{port}.log"
        cmd = [sys.executable, "-m", "peapod.cli", "serve", str(args.run_dir), "--host", "127.0.0.1", "--port", str(port),
               "--device", args.device, "--max-batch", str(args.max_batch), "--max-wait-ms", str(args.max_wait_ms),
               "--log-level", "warning"]
        with open(log, "wb") as fh:
            proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT)
    try:
        t_start = time.perf_counter()
        health = wait_for_health(base, proc, args.startup_timeout, log)
        startup = time.perf_counter() - t_start
        everything = plan(args.warmup + args.requests, users, items, args.k, args.seed, mix)
        if args.warmup:
            asyncio.run(run_load(base, everything[: args.warmup], min(args.concurrency, args.warmup), args.timeout))
        before = httpx.get(f"{base}/health", timeout=10).json()["batching"]
        result = asyncio.run(run_load(base, everything[args.warmup :], args.concurrency, args.timeout))
        after = httpx.get(f"{base}/health", timeout=10).json()["batching"]
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=20)

    batches = after["batches_run"] - before["batches_run"]
    served = after["requests_served"] - before["requests_served"]
    per_endpoint = {}
    for kind, a in after["endpoints"].items():
        b = before["endpoints"][kind]
        nb, nr = a["batches_run"] - b["batches_run"], a["requests_served"] - b["requests_served"]
        per_endpoint[kind] = {"batches": nb, "requests": nr, "mean_batch": round(nr / nb, 2) if nb else None, "largest_batch": a["largest_batch"]}
    out = {
        "benchmark": "serve_load",
        "run_dir": str(args.run_dir),
        "requests": args.requests,
        "concurrency": args.concurrency,
        "mix": {"recommend_user": mix[0], "recommend_history": mix[1], "explain": mix[2]},
        "k": args.k,
        **result,
        "server": {
            "startup_s": round(startup, 2) if proc is not None else None,
            "model": {key: health.get(key) for key in ("variant", "indexing", "catalogue_size", "users", "dataset", "device")},
            "max_batch": args.max_batch,
            "max_wait_ms": args.max_wait_ms,
            "batches": batches,
            "requests": served,
            "mean_batch": round(served / batches, 2) if batches else None,
            "endpoints": per_endpoint,
        },
        "machine": {"cpus": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2), "python": platform.python_version()},
    }
    text = json.dumps(out, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
