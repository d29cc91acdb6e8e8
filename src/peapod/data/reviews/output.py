"""The files `peapod data from-reviews` writes: sequences, datamaps, explanation records, lexicon, stats, README.

`build_output` turns prepared reviews (`peapod.data.reviews.read.prepare_reviews`) into everything that is written;
`write_output` writes it into a temporary sibling directory that replaces `out` in one rename.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

import peapod
from peapod.data.dataset import MIN_SEQUENCE_LENGTH, SPLITS
from peapod.data.explanations import SPLIT_FRACTIONS, assign_explanation_splits
from peapod.data.reviews import extraction
from peapod.data.reviews.extraction import FeatureLexicon
from peapod.data.reviews.read import AMAZON_FIELDS, Prepared
from peapod.io import atomic_directory

STATS_FORMAT = "peapod-reviews-stats/1"


@dataclass
class Output:
    sequences: list[list[int]]  # per user id 1.., item ids 1..
    datamaps: dict
    records: list[dict]
    lexicon: FeatureLexicon
    stats: dict


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:  # pragma: no cover - both are dependencies
        return "unknown"


def build_output(
    prepared: Prepared,
    source: dict,
    *,
    seed: int = 0,
    min_df: int | None = None,
    top_k: int | None = None,
    strict: bool = False,
    progress: bool = False,
) -> Output:
    """Sequences, datamaps, explanation records (one per review at most, with splits) and stats."""
    from tqdm.auto import tqdm

    min_df = extraction.DEFAULT_MIN_DF if min_df is None else min_df
    top_k = extraction.DEFAULT_TOP_K if top_k is None else top_k
    if min_df < 1 or top_k < 1:
        raise ValueError("--min-df and --top-k must be >= 1")
    opinions = extraction.opinion_words()
    item_id = prepared.item_id()
    # Record order: users by id, each user's reviews by time (ties in file order).
    ordered = [(u + 1, r) for u, seq in enumerate(prepared.sequences) for r in seq]
    sentences, tokenized = [], []
    for _, r in tqdm(ordered, desc="splitting sentences", unit=" reviews", disable=not progress, mininterval=0.5):
        ss = extraction.split_sentences(r.text) if r.text.strip() else []
        sentences.append(ss)
        tokenized.append([extraction.tokens(s) for s in ss])
    lexicon = extraction.build_feature_lexicon(tokenized, opinions, min_df=min_df, top_k=top_k)
    df = lexicon.df
    picked = []
    for (uid, r), ss, tt in zip(ordered, sentences, tokenized):
        found = extraction.pick_explanation(ss, tt, df, opinions)
        if found is not None:
            picked.append((uid, item_id[r.item], r, found))
    splits = assign_explanation_splits([p[0] for p in picked], [p[1] for p in picked], seed)
    records = [
        {"user": uid, "item": iid, "explanation": ex.sentence, "feature": ex.feature, "rating": r.rating, "split": s}
        for (uid, iid, r, ex), s in zip(picked, splits)
    ]
    sequences = [[item_id[r.item] for r in seq] for seq in prepared.sequences]
    datamaps = {
        "user2id": {u: str(k + 1) for k, u in enumerate(prepared.users)},
        "item2id": {it: str(k + 1) for k, it in enumerate(prepared.items)},
        "id2user": {str(k + 1): u for k, u in enumerate(prepared.users)},
        "id2item": {str(k + 1): it for k, it in enumerate(prepared.items)},
    }
    per_split = {s: sum(1 for r in records if r["split"] == s) for s in SPLITS}
    kept = sum(len(s) for s in sequences)
    stats = {
        "format": STATS_FORMAT,
        "source": source,
        "reviews_read": prepared.reviews_read,
        "users_dropped": prepared.users_dropped,
        "reviews_dropped": prepared.reviews_dropped,
        "min_reviews_per_user": MIN_SEQUENCE_LENGTH,
        "strict": strict,
        "empty_texts": len(prepared.empty_texts),
        "empty_text_lines": prepared.empty_texts[:20],
        "users": len(prepared.users),
        "items": len(prepared.items),
        "interactions": kept,
        "repeated_user_item_reviews": sum(len(s) - len(set(s)) for s in sequences),
        "explanations": {"total": len(records), **per_split},
        "explanation_share": round(len(records) / kept, 4) if kept else 0.0,
        "lexicon_size": len(lexicon),
        "top_features": [t for t, _ in lexicon.terms[:20]],
        "extraction": {
            "rule": "peapod.data.reviews.extraction (module doc)",
            "min_df": min_df,
            "top_k": top_k,
            "min_determiner_share": extraction.MIN_DETERMINER_SHARE,
            "max_predicate_share": extraction.MAX_PREDICATE_SHARE,
            "max_modifier_share": extraction.MAX_MODIFIER_SHARE,
            "sentence_words": [extraction.MIN_WORDS, extraction.MAX_WORDS],
            "opinion_words": len(opinions),
            "opinion_min_valence": extraction.MIN_OPINION_VALENCE,
            "sentence_splitter": f"syntok {_version('syntok')}",
            "opinion_lexicon": f"vaderSentiment {_version('vaderSentiment')} vader_lexicon.txt",
        },
        "splits": {
            "explanations": f"assign_explanation_splits, seed {seed}: each user's and item's first record (by user, "
            f"then time) to train, the rest {'/'.join(str(round(f * 100)) for f in SPLIT_FRACTIONS)} train/val/test",
            "sequences": "leave-one-out at load time (last item test, second-to-last validation)",
            "seed": seed,
        },
        "peapod_version": peapod.__version__,
    }
    return Output(sequences, datamaps, records, lexicon, stats)


def _readme(stats: dict, command: str | None) -> str:
    src, ex = stats["source"], stats["explanations"]
    amazon = src["fields"] == asdict(AMAZON_FIELDS)
    lines = [
        "# Dataset built from raw reviews",
        "",
        f"Made by `peapod data from-reviews` (peapod {stats['peapod_version']}) from `{Path(src['path']).name}`",
        f"({src['bytes']:,} bytes, sha256 `{src['sha256']}`, {src['format']}, compression {src['compression']}).",
        *([f"Command: `{command}`", ""] if command else [""]),
        "| | |",
        "|---|---|",
        f"| reviews read | {stats['reviews_read']:,} |",
        f"| users dropped (< {stats['min_reviews_per_user']} reviews) | {stats['users_dropped']:,} ({stats['reviews_dropped']:,} reviews) |",
        f"| users / items / interactions | {stats['users']:,} / {stats['items']:,} / {stats['interactions']:,} |",
        f"| empty texts (kept, no explanation) | {stats['empty_texts']:,} |",
        f"| explanations train / val / test | {ex['train']:,} / {ex['val']:,} / {ex['test']:,} |",
        f"| reviews with an explanation | {stats['explanation_share'] * 100:.2f}% |",
        f"| feature lexicon | {stats['lexicon_size']:,} terms |",
        "",
        "## Files",
        "",
        "- `sequential_data.txt`: `user item1 item2 ...` per user, ids 1.. in order of first appearance in the source;",
        "  items by review time, equal times in file order. Leave-one-out splits are made when the directory is loaded.",
        "- `datamaps.json`: `user2id` / `item2id` (original id -> id) and `id2user` / `id2item`.",
        "- `explanation.jsonl`: `{user, item, explanation, feature, rating, split}`, at most one per review: the first",
        "  sentence that names a lexicon feature with a VADER opinion word (`peapod.data.reviews.extraction`).",
        f"  Splits: {stats['splits']['explanations']}.",
        "- `feature_lexicon.tsv`: the feature terms and the number of reviews that contain each.",
        "- `reviews_stats.json`: the counts above, the extraction settings and library versions, the source's sha256.",
        "",
        "## Provenance and terms",
        "",
        "Derived from the source file named above; its terms of use apply to this directory.",
    ]
    if amazon:
        lines.append("Amazon review data (McAuley lab): cite He & McAuley, WWW 2016, and McAuley et al., SIGIR 2015.")
    return "\n".join(lines) + "\n"


def write_output(output: Output, out: str | Path, command: str | None = None) -> None:
    """Write every file into a temporary sibling of `out`, then rename it into place."""
    with atomic_directory(out) as tmp:
        (tmp / "sequential_data.txt").write_text(
            "".join(f"{u} " + " ".join(map(str, items)) + "\n" for u, items in enumerate(output.sequences, 1)), encoding="utf-8"
        )
        (tmp / "datamaps.json").write_text(json.dumps(output.datamaps, ensure_ascii=False) + "\n", encoding="utf-8")
        if output.records:  # an empty explanation file is an error for the reader; no records, no file
            (tmp / "explanation.jsonl").write_text(
                "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in output.records), encoding="utf-8"
            )
        (tmp / "feature_lexicon.tsv").write_text(
            "feature\treviews\n" + "".join(f"{t}\t{n}\n" for t, n in output.lexicon.terms), encoding="utf-8"
        )
        (tmp / "reviews_stats.json").write_text(json.dumps(output.stats, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        (tmp / "README.md").write_text(_readme(output.stats, command), encoding="utf-8")
