"""Evaluation speed: legacy beam search vs exact scoring on one trained model, same users.

    python benchmarks/eval_speed.py RUN_DIR [--max-users 100] [--batch-size 32] [--split test]
                                    [--threads N] [--repeats 1] [--out FILE]

(also `peapod bench eval-speed RUN_DIR ...`). Top-n: `beam` (20 beams over the 1+99 candidate input)
vs `score` (exact log-likelihood of the 100 candidates). Sequential: `beam` (20 beams, 20 outputs)
vs `full` (exact top-20 of the whole catalogue). Prints the JSON result and a table; model loading
and cache building are timed separately. On a shared machine, `--threads 1` gives stable timings.
"""

from __future__ import annotations

import argparse
import json
import sys

from peapod.bench.eval_speed import format_speed_table, run_eval_speed
from peapod.io import write_json_atomic


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", help="run directory (its best/ model) or model directory")
    ap.add_argument("--max-users", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--split", choices=("val", "test"), default="test")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--repeats", type=int, default=1, help="runs per method; the fastest is reported")
    ap.add_argument("--data", default=None, help="dataset for a bare model directory")
    ap.add_argument("--out", default=None, help="also write the JSON here")
    args = ap.parse_args(argv)
    if args.max_users < 1 or args.batch_size < 1 or args.repeats < 1 or (args.threads is not None and args.threads < 1):
        ap.error("--max-users, --batch-size, --repeats and --threads must be >= 1")
    result = run_eval_speed(
        args.run_dir, max_users=args.max_users, batch_size=args.batch_size, split=args.split,
        threads=args.threads, data=args.data, repeats=args.repeats,
    )
    print(json.dumps(result, indent=2))
    print()
    print(format_speed_table(result))
    if args.out:
        write_json_atomic(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
