"""Training speed on a quiet machine and beside another busy torch process, with the thread policy of
`peapod.runtime.share_cpu` ("auto") against a fixed thread count (the torch default, "before").

    python benchmarks/cpu_sharing.py --out benchmarks/results/cpu-sharing.json

Each arm trains the tiny recipe on the embedded demo-toys data for `--steps` steps and reports the
median of the logged samples/s (the first logging window, which includes start-up, is left out). The
competitor is a one-thread torch process doing matrix products for at most `--competitor-s` seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMPETITOR = """
import time, torch
torch.set_num_threads(1)
a = torch.randn(384, 384)
stop = time.monotonic() + {seconds}
while time.monotonic() < stop:
    a = torch.tanh(a @ a)
"""


def train_speed(policy: str, steps: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env["PEAPOD_THREADS"] = policy
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "peapod.cli", "train", "-c", "tiny", "--data", "demo-toys",
               "--out", str(run), "-q", "--set", f"train.max_steps={steps}", "--set", "train.log_every=10",
               "--set", "train.checkpoint_every=100000", "--set", "train.val_max_users=20"]
        subprocess.run(cmd, check=True, env=env, capture_output=True, text=True)
        events = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
        summary = json.loads((run / "summary.json").read_text())
    speeds = [e["samples_per_s"] for e in events if e["event"] == "train"][1:]
    return {"median_samples_per_s": round(statistics.median(speeds), 1), "windows": len(speeds), "threads": summary["threads"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--competitor-s", type=float, default=300.0)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    rows = []
    for setting in ("quiet", "beside a one-thread torch process"):
        for name, policy in (("before", str(cores)), ("after", "auto")):
            competitor = None
            if setting != "quiet":
                competitor = subprocess.Popen([sys.executable, "-c", COMPETITOR.format(seconds=args.competitor_s)])
                time.sleep(1.0)  # let it reach its loop
            try:
                result = train_speed(policy, args.steps)
            finally:
                if competitor is not None:
                    competitor.terminate()
                    competitor.wait(timeout=30)
            rows.append({"setting": setting, "arm": name, "policy": f"PEAPOD_THREADS={policy}", **result})
            print(f"{setting:<36} {name:<7} {result['median_samples_per_s']:>7.1f} samples/s  threads {result['threads']}", flush=True)
    quiet = {r["arm"]: r["median_samples_per_s"] for r in rows if r["setting"] == "quiet"}
    for r in rows:
        r["of_quiet_before"] = round(r["median_samples_per_s"] / quiet["before"], 3)
    result = {"benchmark": "cpu-sharing", "command": "python benchmarks/cpu_sharing.py", "steps": args.steps, "cores": cores,
              "date": time.strftime("%Y-%m-%d"), "rows": rows}
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["rows"], indent=1))


if __name__ == "__main__":
    main()
