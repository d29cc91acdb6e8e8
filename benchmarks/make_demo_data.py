"""Regenerate the embedded datasets: `demo` (Musical Instruments) and `demo-toys` (a P5 Toys subset).

    python benchmarks/make_demo_data.py                    # both
    python benchmarks/make_demo_data.py --only demo        # or --only demo-toys
    [--mi-source ../shared/data/amazon-mi/reviews_Musical_Instruments_5.json.gz] [--toys-source ../shared/data/toys]

`demo` (src/peapod/data/demo/): the Amazon 2014 Musical Instruments 5-core reviews, converted by the real
`peapod data from-reviews` command (run as a subprocess from the repository root, so the command its README and
`reviews_stats.json` record is the one that ran), plus 99 negatives per user (seed 0) drawn from its own
catalogue and a README with the provenance (the command's own README is kept, unchanged, at its end). The source's
sha256 is checked first. The output is byte-identical for the same syntok and vaderSentiment versions.

`demo-toys` (src/peapod/data/demo_toys/): the users of `explanation-sample.jsonl` with their full sequences from
`sequential.txt` (original P5 ids kept, so it is a real subset), the datamaps restricted to those users and their
items, the explanation records copied byte for byte, and 99 negatives per user (seed 0) drawn from its own item
catalogue. Running it twice gives identical bytes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from peapod.data.negatives import sample_negatives, write_negatives
from peapod.data.p5 import load_p5_dir
from peapod.io import atomic_directory

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "src" / "peapod" / "data"
SHARED = ROOT.parent / "shared" / "data"
NEGATIVES, SEED = 99, 0

# ---- demo: Amazon Musical Instruments, via `peapod data from-reviews` ---------------------------------------
MI_SOURCE = SHARED / "amazon-mi" / "reviews_Musical_Instruments_5.json.gz"
MI_OUT = DATA / "demo"
MI_SHA256 = "03f9cc27ae13a454cb4ea6cb620fb10546cc1194ef921441d1c5f34addff2748"
MI_BYTES = 2_460_495
#: The from-reviews settings, spelled out on the command line (they equal its defaults).
MI_SETTINGS = ["--seed", "0", "--min-df", "10", "--top-k", "1000"]
MI_FILES = ("sequential_data.txt", "datamaps.json", "explanation.jsonl", "negative_samples.txt", "feature_lexicon.tsv", "reviews_stats.json")

MI_README = """# Embedded demo dataset `demo`

The **Amazon Musical Instruments** 5-core reviews (Amazon review data, 2014), converted into a P5 directory by
`peapod data from-reviews`: every user and item of the file, with all three tasks and complete splits. It ships
inside the package so that `peapod demo` and the tests run with no download; `peapod.data.load_dataset("demo")`
(or `peapod.data.load_demo()`) reads it. The P5 Amazon Toys subset that was the demo before is the embedded
dataset `demo-toys` (`src/peapod/data/demo_toys/`).

| | |
|---|---|
| users | {users:,} |
| items | {items:,} |
| interactions | {interactions:,} (one per review) |
| sequence length | min {len_min}, mean {len_mean:.2f}, max {len_max} |
| sequential split | train {seq_train:,} / val {seq_val:,} / test {seq_test:,} interactions (leave-one-out, made at load time) |
| explanation records | {explanations:,} (train {exp_train:,}, val {exp_val:,}, test {exp_test:,}) |
| negatives | {negatives} per user |

Ids are the converter's: users and items numbered 1.. in order of first appearance in the source file;
`datamaps.json` maps them back to the Amazon reviewerID / asin.

## Source

`reviews_Musical_Instruments_5.json.gz` ({src_bytes:,} bytes, sha256 `{src_sha}`), staged as
`shared/data/amazon-mi/` (see `shared/data/PROVENANCE.md` of the project): a byte copy of
lileipisces/Sentires-Guide `lei/input/reviews_Musical_Instruments_5.json.gz` (repository HEAD
e04cabd18bb09d8d2e5bd6eef05f08738cfbb198, file last changed in 6f2e52c1ba060d350aad6164752d9b8bded8cfd0), the
raw Amazon 2014 5-core file: {reviews:,} reviews, {users:,} reviewerIDs, {items:,} asins.

## How it was made

1. From the repository root (the peapod checkout, with `shared/` beside it):

   ```bash
   {command}
   ```

   Settings: the Amazon field names (`reviewerID`, `asin`, `unixReviewTime`, `overall`, `reviewText`), gzip JSON
   lines; not `--strict`, so users with fewer than 3 reviews are dropped ({users_dropped} here) and empty texts are
   kept as interactions without an explanation ({empty_texts} here); feature lexicon `--min-df 10 --top-k 1000`
   ({lexicon:,} features); explanation split `--seed 0` (80/10/10, each user's and item's first record in train);
   {splitter}, {opinions}, peapod {peapod_version}. {share:.1%} of the reviews gave an explanation.
   Every file except `negative_samples.txt` and this README is the command's output, unchanged.
2. `negative_samples.txt`: {negatives} per user, uniform without replacement over the items the user never
   interacted with, `peapod.data.sample_negatives(ds, n={negatives}, seed={seed})`, so the top-n candidates of
   every evaluation are fixed.
3. `README.md`: this text, followed by the README the command wrote (unchanged, below the line).

Regenerate with `python benchmarks/make_demo_data.py --only demo` (checks the source's sha256 first); the output
is byte-identical with the same syntok and vaderSentiment versions (the extraction depends on them).

## Files

| file | bytes | sha256 |
|---|---|---|
{file_rows}

- `sequential_data.txt`: one line `user item1 item2 ...` per user (items by review time), LF line ends.
- `datamaps.json`: `user2id` / `item2id` and `id2user` / `id2item` (id <-> Amazon reviewerID / asin).
- `explanation.jsonl`: `{{"user", "item", "explanation", "feature", "rating", "split"}}` per line, at most one
  per review: its first sentence naming a lexicon feature with an opinion word (`peapod.data.reviews.extraction`).
- `feature_lexicon.tsv`, `reviews_stats.json`: the feature terms; the counts and settings of the conversion.
- `negative_samples.txt`: one line `user neg1 ... neg{negatives}` per user.

## Licence and citations

- Amazon review data (2014), McAuley lab, UCSD: for research use under its terms; this directory is derived from
  it and the same terms apply. Cite R. He and J. McAuley, *Ups and Downs: Modeling the Visual Evolution of
  Fashion Trends with One-Class Collaborative Filtering*, WWW 2016; J. McAuley, C. Targett, Q. Shi and
  A. van den Hengel, *Image-based Recommendations on Styles and Substitutes*, SIGIR 2015.
- The explanations are peapod's own extraction (first feature + opinion sentence, in the manner of the Sentires
  explanation data of PETER and P5), not those papers' files; the opinion words are VADER's lexicon
  (C. J. Hutto and E. Gilbert, *VADER: A Parsimonious Rule-based Model for Sentiment Analysis of Social Media
  Text*, ICWSM 2014; MIT licence).

Small ({users:,} users): use it for pipelines, tests and a first look, not for reporting metrics.

---

"""


def rel(path: Path) -> str:
    """`path` relative to the repository root when it can be, else absolute (for the recorded command)."""
    return os.path.relpath(path.resolve(), ROOT)


def file_rows(out: Path, names: tuple[str, ...]) -> str:
    return "\n".join(f"| `{f}` | {(out / f).stat().st_size:,} | `{sha256(out / f)}` |" for f in names)


def build_mi(source: Path, out: Path) -> None:
    if not source.is_file():
        raise SystemExit(f"{source}: no such file")
    if sha256(source) != MI_SHA256:
        raise SystemExit(f"{source}: sha256 is not {MI_SHA256} (not the staged Musical Instruments file)")
    exe = shutil.which("peapod", path=str(Path(sys.executable).parent)) or shutil.which("peapod")
    if exe is None:
        raise SystemExit("no `peapod` command next to this Python; install the package (pip install -e .)")
    args = ["data", "from-reviews", rel(source), "--out", rel(out), *MI_SETTINGS, "--force"]
    command = " ".join(["peapod", *args])
    subprocess.run([exe, *args], cwd=ROOT, check=True)  # the CLI records `peapod ARGS` in README and stats

    ds = load_p5_dir(out, name="demo")
    write_negatives(ds, sample_negatives(ds, n=NEGATIVES, seed=SEED), out / "negative_samples.txt")
    (out / "negative_samples.txt").chmod(0o644)  # the atomic writer's temp file is private
    ds = load_p5_dir(out, name="demo")  # read back: validates the negatives too
    stats = json.loads((out / "reviews_stats.json").read_text(encoding="utf-8"))
    own_readme = (out / "README.md").read_text(encoding="utf-8")
    if command not in own_readme:
        raise SystemExit(f"the command's README does not record {command!r}")
    s = ds.stats()
    exp, seq, lengths = s["explanations"], s["split_interactions"], s["sequence_length"]
    text = MI_README.format(
        users=ds.n_users, items=ds.n_items, interactions=ds.n_interactions,
        len_min=lengths["min"], len_mean=lengths["mean"], len_max=lengths["max"],
        seq_train=seq["train"], seq_val=seq["val"], seq_test=seq["test"],
        explanations=len(ds.explanations), exp_train=exp["train"], exp_val=exp["val"], exp_test=exp["test"],
        negatives=NEGATIVES, seed=SEED, src_bytes=stats["source"]["bytes"], src_sha=stats["source"]["sha256"],
        reviews=stats["reviews_read"], command=command, users_dropped=stats["users_dropped"],
        empty_texts=stats["empty_texts"], lexicon=stats["lexicon_size"],
        splitter=stats["extraction"]["sentence_splitter"], opinions=stats["extraction"]["opinion_lexicon"],
        peapod_version=stats["peapod_version"], share=stats["explanation_share"], file_rows=file_rows(out, MI_FILES),
    )
    (out / "README.md").write_text(text + own_readme, encoding="utf-8")
    report(out, ds)


# ---- demo-toys: a subset of the staged P5 toys files ------------------------------------------------------
TOYS_SOURCE = SHARED / "toys"
TOYS_OUT = DATA / "demo_toys"
TOYS_FILES = ("sequential_data.txt", "datamaps.json", "explanation.jsonl", "negative_samples.txt")

TOYS_README = """# Embedded dataset `demo-toys`

A small, real subset of the P5 **Amazon Toys & Games** data, shipped inside the package for the tests that need
P5 Toys ids and explanation splits. `peapod.data.load_dataset("demo-toys")` (or `load_demo("demo-toys")`) reads
it. It was the embedded `demo` until the Musical Instruments data (`src/peapod/data/demo/`) replaced it.

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
   negatives (those are not public); they are sampled within the subset's catalogue.

Regenerate with `python benchmarks/make_demo_data.py --only demo-toys` (reads `../shared/data/toys`); the output
is byte-identical.

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
block covers only 49 items). Use it for pipelines and tests, not for reporting metrics.
"""


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build_toys(source: Path, out: Path) -> None:
    if not (source / "explanation-sample.jsonl").is_file():
        raise SystemExit(f"{source} has no explanation-sample.jsonl")
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
        ds = load_p5_dir(tmp, name="demo-toys")
        write_negatives(ds, sample_negatives(ds, n=NEGATIVES, seed=SEED), tmp / "negative_samples.txt")
        (tmp / "negative_samples.txt").chmod(0o644)  # the atomic writer's temp file is private
        ds = load_p5_dir(tmp, name="demo-toys")  # read back: validates the negatives too
        counts = ds.stats()["explanations"]
        (tmp / "README.md").write_text(
            TOYS_README.format(
                users=ds.n_users,
                items=ds.n_items,
                interactions=ds.n_interactions,
                explanations=len(ds.explanations),
                train=counts["train"],
                test=counts["test"],
                negatives=NEGATIVES,
                seed=SEED,
                file_rows=file_rows(tmp, TOYS_FILES),
                sha_seq=sha256(source / "sequential.txt"),
                sha_maps=sha256(source / "datamaps.json"),
                sha_exp=sha256(source / "explanation-sample.jsonl"),
            ),
            encoding="utf-8",
        )
    report(out, ds)


def report(out: Path, ds) -> None:
    total = sum(p.stat().st_size for p in out.iterdir())
    print(f"wrote {out} ({ds.n_users} users, {ds.n_items} items, {len(ds.explanations)} explanations, {total:,} bytes)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=("demo", "demo-toys"), help="rebuild one of the two (default both)")
    parser.add_argument("--mi-source", type=Path, default=MI_SOURCE, help="the staged Musical Instruments reviews file")
    parser.add_argument("--toys-source", type=Path, default=TOYS_SOURCE, help="the staged toys directory")
    parser.add_argument("--mi-out", type=Path, default=MI_OUT, help="the `demo` directory to (re)write")
    parser.add_argument("--toys-out", type=Path, default=TOYS_OUT, help="the `demo-toys` directory to (re)write")
    args = parser.parse_args()
    if args.only in (None, "demo"):
        build_mi(args.mi_source, args.mi_out)
    if args.only in (None, "demo-toys"):
        build_toys(args.toys_source, args.toys_out)


if __name__ == "__main__":
    main()
