"""The benchmark grid: {dataset} x {variant} x {protocol} x {seed}, one JSON per finished cell.

A grid is a YAML spec (`benchmarks/grids/*.yaml`, validated by pydantic):

    name: cpu                          # the benchmarks/NOTEBOOK.md section and the default output folder
    config: benchmarks/configs/cpu-small.yaml   # the recipe or run config every generative cell starts from
    datasets: {toys: ../shared/data/toys, beauty: ../shared/data/beauty}
    variants: [p5, pod, peapod-neighbors, peapod-pool, popularity, sasrec]   # also: retrieval
    protocols: [legacy, rigorous]
    seeds: {legacy: [0], rigorous: [0, 1, 2]}
    budget: {max_steps: 600, max_minutes: 30}   # per training run
    eval: {max_users: 1000, split: test}
    set: []                            # extra `section.key=value` overrides for generative runs
    variant_set: {p5: [objective.kind=published]}   # overrides for one variant only
    dataset_set: {sports: [train.epochs=2]}          # overrides for one dataset (a variant's own win)
    sasrec: {loss: ce, epochs: 200, patience: 5}

A cell is one (dataset, variant, protocol, seed). A generative cell (p5, pod, peapod-*) trains one
model with the protocol's item indexing (legacy: `p5-sequential`, rigorous: `random`, or the spec's
`indexing` for that protocol, with
`index.seed` = `train.seed` = the seed; protocols that index items alike share one training run) and
evaluates it with that protocol on the first
`eval.max_users` users. A baseline cell (popularity, sasrec) scores items exactly, so the protocol
changes nothing for it: it runs once per seed (popularity once) and appears in both tables. Every
cell is evaluated on the same users and the same fixed 1+99 candidates as the generative cells. The
`retrieval` baseline (explanations only, `peapod.baselines.retrieval`) is one deterministic cell on the same
first `eval.max_users` explanation records; its legacy BLEU/ROUGE use whole references (the models' legacy
protocol cuts them to 20 ids of the run's tokenizer, which a baseline does not have).

Resuming: a cell with its JSON is never recomputed (unless `force`); a training run cut off midway
continues from its last checkpoint. Results live in `<out>/cells/*.json` (small, meant to be kept);
training runs in `<out>/runs/` (large, not).

`spec` holds the schema and the plan of cells, `run` computes cells, `report` makes the tables:
`grid_markdown(results)` aggregates the cell JSONs into tables with the POD anchor figures and the
targets' status; `update_markdown_section` splices it into benchmarks/NOTEBOOK.md between markers.
"""

from peapod.bench.grid.report import grid_markdown, machine_text, update_markdown_section
from peapod.bench.grid.run import (
    _generative_overrides,
    cell_command,
    load_results,
    machine_info,
    run_cell,
    run_grid,
)
from peapod.bench.grid.spec import (
    BASELINES,
    GENERATIVE,
    INDEXING,
    POD_ANCHORS,
    PROTOCOLS,
    VARIANTS,
    Cell,
    GridError,
    GridSpec,
    load_grid_spec,
    plan_cells,
)

__all__ = [
    "BASELINES",
    "GENERATIVE",
    "INDEXING",
    "POD_ANCHORS",
    "PROTOCOLS",
    "VARIANTS",
    "Cell",
    "GridError",
    "GridSpec",
    "_generative_overrides",
    "cell_command",
    "grid_markdown",
    "load_grid_spec",
    "load_results",
    "machine_info",
    "machine_text",
    "plan_cells",
    "run_cell",
    "run_grid",
    "update_markdown_section",
]
