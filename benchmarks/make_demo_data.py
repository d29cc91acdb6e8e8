"""Regenerate the embedded demo dataset (src/peapod/data/demo/) from the staged P5 toys files.

    python benchmarks/make_demo_data.py [--source ../shared/data/toys] [--out src/peapod/data/demo]

Subset rule: the users of `explanation-sample.jsonl` with their full sequences from `sequential.txt`
(original P5 ids kept, so the demo is a real subset), the datamaps restricted to those users and their
items, the explanation records copied byte for byte, and 99 negatives per user (seed 0) drawn from the
demo's own item catalogue. The output is deterministic: running it twice gives identical bytes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

from peapod.data.negatives import sample_negatives, write_negatives
from peapod.data.p5 import load_p5_dir
from peapod.io import atomic_directory

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SOURCE = ROOT.parent / "shared" / "data" / "toys"
DEFAULT_OUT = ROOT / "src" / "peapod" / "data" / "demo"
NEGATIVES, SEED = 99, 0
FILES = ("sequential_data.txt", "datamaps.json", "explanation.jsonl", "negative_samples.txt")

README = """# Embedded demo dataset

A small, real subset of the P5 **Amazon Toys & Games** data, shipped inside the package so that
`peapod demo` and the tests run with no download. `peapod.data.load_demo()` reads it.

| | |
|---|---|
| users | {users} |
| items | {items} |
| interactions | {interactions} |
| explanation records | {explanations} (train {train}, val 0, test {test}) |
| negatives | {negatives} per user |

## Files

| file | bytes | sha256 |
|---|---|---|
{file_rows}

- `sequential_data.txt`: one line `user item1 item2 ...` per user (items in time order), LF line ends.
- `datamaps.json`: `id2user` / `id2item` (P5 raw id -> Amazon reviewerID / asin) for these users and items.
- `explanation.jsonl`: `{{"user", "item", "explanation", "feature", "split"}}` per line, P5 ids.
- `negative_samples.txt`: one line `user neg1 ... neg99` per user.

## Subset rule

1. Users: every user of `toys/explanation-sample.jsonl` ({users} users).
2. Sequences: each such user's **full** line of `toys/sequential.txt`, in the source's user order; the
   original P5 numeric ids are kept, so ids, sequences and explanations are those of the full dataset.
3. Items: the items of those sequences; `datamaps.json` is the source `id2user` / `id2item` restricted
   to these users and items.
4. Explanations: `explanation-sample.jsonl` copied byte for byte. Its `split` field is the source split
   (the first records of P5's `train` and the last of its `test`; the sample has **no val** records).
5. Negatives: {negatives} per user, uniform without replacement over the demo items the user never
   interacted with, `peapod.data.sample_negatives(ds, n={negatives}, seed={seed})`. These are not P5's
   negatives (those are not public); they are sampled within the demo catalogue.

Regenerate with `python benchmarks/make_demo_data.py` (reads `../shared/data/toys`); the output is
byte-identical.

## Provenance and citations

- Source files (see `shared/data/PROVENANCE.md` of the project):
  - `toys/sequential.txt`, `toys/datamaps.json`: WangXFng/RDRec `data/toys/` at commit
    aa78eec5511e5937c66ba41c41e77ab6447ac0b3 (repository HEAD 4055c3028d3afbd57a0fffd54076825836b7cad7),
    the P5 toys indexing. sha256 `{sha_seq}` and `{sha_maps}`.
  - `toys/explanation-sample.jsonl`: an exact extract (976 complete records) of htired/ISRF
    `data/toys/explanation.json` at commit 7ff33344cde774d04f5f52e26f22a84b429e4caf, the P5 toys
    explanation splits. sha256 `{sha_exp}`.
- Amazon review data (2014): R. He and J. McAuley, *Ups and Downs: Modeling the Visual Evolution of
  Fashion Trends with One-Class Collaborative Filtering*, WWW 2016; J. McAuley, C. Targett, Q. Shi and
  A. van den Hengel, *Image-based Recommendations on Styles and Substitutes*, SIGIR 2015.
- P5 preprocessing and explanation splits: S. Geng, S. Liu, Z. Fu, Y. Ge and Y. Zhang, *Recommendation
  as Language Processing (RLP): A Unified Pretrain, Personalized Prompt & Predict Paradigm (P5)*,
  RecSys 2022.

The explanation sample is two contiguous blocks of the source file, not a random sample (the train
block covers only 49 items). Use the demo for pipelines and tests, not for reporting metrics.
"""


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build(source: Path, out: Path) -> None:
    exp_bytes = (source / "explanation-sample.jsonl").read_bytes()
    records = [json.loads(line) for line in exp_bytes.decode("utf-8").splitlines() if line.strip()]
    wanted = {str(r["user"]) for r in records}

    lines, items = [], set()
    for line in (source / "sequential.txt").read_text(encoding="utf-8").splitlines():
        tokens = line.split()
        if tokens and tokens[0] in wanted:
            lines.append(" ".join(tokens))
            items.update(tokens[1:])
    found = {line.split()[0] for line in lines}
    if found != wanted:
        raise SystemExit(f"users missing from sequential.txt: {sorted(wanted - found)[:5]}")

    maps = json.loads((source / "datamaps.json").read_text(encoding="utf-8"))
    users_in_order = [line.split()[0] for line in lines]
    demo_maps = {
        "id2user": {u: maps["id2user"][u] for u in users_in_order},
        "id2item": {i: maps["id2item"][i] for i in sorted(items, key=int)},
    }

    with atomic_directory(out) as tmp:
        tmp.chmod(0o755)  # mkdtemp makes it private; package data should be readable
        (tmp / "sequential_data.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
        (tmp / "datamaps.json").write_text(json.dumps(demo_maps, separators=(",", ":")) + "\n", encoding="utf-8")
        (tmp / "explanation.jsonl").write_bytes(exp_bytes)
        ds = load_p5_dir(tmp, name="demo")
        write_negatives(ds, sample_negatives(ds, n=NEGATIVES, seed=SEED), tmp / "negative_samples.txt")
        (tmp / "negative_samples.txt").chmod(0o644)  # the atomic writer's temp file is private
        ds = load_p5_dir(tmp, name="demo")  # read back: validates the negatives too
        counts = ds.stats()["explanations"]
        rows = "\n".join(f"| `{f}` | {(tmp / f).stat().st_size:,} | `{sha256(tmp / f)}` |" for f in FILES)
        (tmp / "README.md").write_text(
            README.format(
                users=ds.n_users,
                items=ds.n_items,
                interactions=ds.n_interactions,
                explanations=len(ds.explanations),
                train=counts["train"],
                test=counts["test"],
                negatives=NEGATIVES,
                seed=SEED,
                file_rows=rows,
                sha_seq=sha256(source / "sequential.txt"),
                sha_maps=sha256(source / "datamaps.json"),
                sha_exp=sha256(source / "explanation-sample.jsonl"),
            ),
            encoding="utf-8",
        )
    total = sum(p.stat().st_size for p in out.iterdir())
    print(f"wrote {out} ({ds.n_users} users, {ds.n_items} items, {total:,} bytes)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="the staged toys directory")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the demo directory to (re)write")
    args = parser.parse_args()
    if not (args.source / "explanation-sample.jsonl").is_file():
        raise SystemExit(f"{args.source} has no explanation-sample.jsonl")
    build(args.source, args.out)


if __name__ == "__main__":
    main()
