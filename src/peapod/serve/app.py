"""The HTTP API: `create_app(recommender) -> FastAPI`, served by `peapod serve RUN_DIR` (uvicorn).

Endpoints (JSON; raw dataset ids; OpenAPI at /docs):

* `POST /recommend` `{user | history, k, exclude_history, explain}` -> the k best items with their
  exact log-likelihoods (and an explanation of each when `explain`).
* `POST /rank` `{user, candidates[, history]}` -> the candidates sorted by exact log-likelihood.
* `POST /explain` `{user, item[, history]}` -> a generated sentence.
* `GET /health` -> the model being served and the micro-batching counters.

Status codes: 404 unknown user without a history, unknown item; 422 malformed body or a value out of
bounds (k 1..100 and at most the catalogue, history 1..200 items, candidates 1..1000).

Concurrent requests of one kind are micro-batched (`MicroBatcher`, one per endpoint kind, started in
the lifespan): the model runs once per batch, and a bad request fails alone.
"""

from __future__ import annotations

import time
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, ConfigDict, Field, model_validator

import peapod
from peapod.serve.batching import BatcherClosed, MicroBatcher
from peapod.serve.recommender import MAX_CANDIDATES, MAX_HISTORY, MAX_K, Recommender, UnknownItem, UnknownUser

__all__ = ["create_app"]

ItemId = Annotated[str, Field(min_length=1, max_length=200, description="a raw item id of the dataset")]
UserId = Annotated[str, Field(min_length=1, max_length=200, description="a raw user id of the dataset")]
History = Annotated[
    list[ItemId],
    Field(min_length=1, max_length=MAX_HISTORY, description=f"items the user interacted with, oldest first (1..{MAX_HISTORY})"),
]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RecommendRequest(_Body):
    user: UserId | None = Field(None, description="a training user; or any id (or none) together with a history")
    history: History | None = Field(None, description="serve this history instead; required for a user the model never saw")
    k: int = Field(10, ge=1, le=MAX_K, description=f"items to return (1..{MAX_K}, at most the catalogue size)")
    exclude_history: bool = Field(True, description="leave the history's items out of the list")
    explain: bool = Field(False, description="add a generated explanation to every item")

    @model_validator(mode="after")
    def _user_or_history(self):
        if self.user is None and self.history is None:
            raise ValueError("give a user, a history, or both")
        return self


class RankRequest(_Body):
    user: UserId | None = None
    history: History | None = Field(None, description="required for a user the model never saw (fold-in only)")
    candidates: list[ItemId] = Field(..., min_length=1, max_length=MAX_CANDIDATES, description=f"distinct item ids (1..{MAX_CANDIDATES})")

    @model_validator(mode="after")
    def _user_or_history(self):
        if self.user is None and self.history is None:
            raise ValueError("give a user, a history, or both")
        return self


class ExplainRequest(_Body):
    user: UserId | None = None
    item: ItemId
    history: History | None = Field(None, description="required for a user the model never saw (fold-in only)")

    @model_validator(mode="after")
    def _user_or_history(self):
        if self.user is None and self.history is None:
            raise ValueError("give a user, a history, or both")
        return self


class ScoredItem(BaseModel):
    item: str
    score: float = Field(description="exact log-likelihood of the item under the model")
    explanation: str | None = None


class RecommendResponse(BaseModel):
    user: str | None
    cold_start: bool = Field(description="the user was served by CF fold-in from the history (not a training user)")
    items: list[ScoredItem]


class RankResponse(BaseModel):
    user: str | None
    cold_start: bool
    items: list[ScoredItem]


class ExplainResponse(BaseModel):
    user: str | None
    item: str
    explanation: str


def _raise_http(e: BaseException):
    if isinstance(e, (UnknownUser, UnknownItem)):
        raise HTTPException(status_code=404, detail=str(e))
    if isinstance(e, ValueError):
        raise HTTPException(status_code=422, detail=str(e))
    if isinstance(e, BatcherClosed):
        raise HTTPException(status_code=503, detail=str(e))
    raise e


def create_app(recommender: Recommender, *, max_batch: int = 32, max_wait_s: float = 0.005) -> FastAPI:
    """A FastAPI app serving `recommender`; its micro-batchers start and stop with the app's lifespan."""
    rec = recommender

    def recommend_batch(reqs: list[RecommendRequest]) -> list:
        return rec.recommend_batch(
            [r.user for r in reqs], [r.k for r in reqs], [r.exclude_history for r in reqs],
            histories=[r.history for r in reqs], explain=[r.explain for r in reqs], return_exceptions=True,
        )

    def rank_batch(reqs: list[RankRequest]) -> list:
        return rec.rank_batch(
            [r.user for r in reqs], [r.candidates for r in reqs], histories=[r.history for r in reqs], return_exceptions=True
        )

    def explain_batch(reqs: list[ExplainRequest]) -> list:
        return rec.explain_batch([r.user for r in reqs], [r.item for r in reqs], histories=[r.history for r in reqs], return_exceptions=True)

    batchers = {
        "recommend": MicroBatcher(recommend_batch, max_batch, max_wait_s),
        "rank": MicroBatcher(rank_batch, max_batch, max_wait_s),
        "explain": MicroBatcher(explain_batch, max_batch, max_wait_s),
    }
    started = {"at": None}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        for b in batchers.values():
            await b.start()
        started["at"] = time.time()
        try:
            yield
        finally:
            for b in batchers.values():
                await b.stop()

    app = FastAPI(
        title="PeaPOD recommender",
        version=peapod.__version__,
        description="Sequential recommendation, candidate ranking and explanation generation from a trained PeaPOD/POD/P5 model.",
        lifespan=lifespan,
    )
    app.state.recommender = rec
    app.state.batchers = batchers

    async def run(kind: str, body):
        try:
            return await batchers[kind].submit(body)
        except Exception as e:
            _raise_http(e)

    def cold(user: str | None) -> bool:
        return user is None or not rec.known_user(user)

    not_found = {404: {"description": "unknown user (without a history) or unknown item"}}

    @app.post("/recommend", response_model=RecommendResponse, responses=not_found)
    async def recommend(body: RecommendRequest) -> RecommendResponse:
        """The k catalogue items with the highest exact log-likelihood for a user (or a history)."""
        result = await run("recommend", body)
        items = [ScoredItem(item=x[0], score=x[1], explanation=x[2] if len(x) > 2 else None) for x in result]
        return RecommendResponse(user=body.user, cold_start=cold(body.user), items=items)

    @app.post("/rank", response_model=RankResponse, responses=not_found)
    async def rank(body: RankRequest) -> RankResponse:
        """The candidates sorted by exact log-likelihood (best first)."""
        result = await run("rank", body)
        return RankResponse(user=body.user, cold_start=cold(body.user), items=[ScoredItem(item=i, score=s) for i, s in result])

    @app.post("/explain", response_model=ExplainResponse, responses=not_found)
    async def explain(body: ExplainRequest) -> ExplainResponse:
        """A generated explanation (greedy decoding) of why the user would like the item."""
        text = await run("explain", body)
        return ExplainResponse(user=body.user, item=body.item, explanation=text)

    @app.get("/health")
    async def health() -> dict:
        """The model being served and the micro-batching counters (per endpoint kind and in total)."""
        per = {kind: b.stats() for kind, b in batchers.items()}
        info = rec.info()
        return {
            "status": "ok" if all(b.running for b in batchers.values()) else "starting",
            "peapod_version": peapod.__version__,
            "uptime_s": round(time.time() - started["at"], 3) if started["at"] else 0.0,
            "model": info["model"],
            "variant": info["variant"],
            "indexing": info["indexing"],
            "catalogue_size": info["catalogue_size"],
            "users": info["users"],
            "dataset": info["dataset"],
            "max_history": info["max_history"],
            "device": info["device"],
            "limits": info["limits"],
            "batching": {
                "batches_run": sum(s["batches_run"] for s in per.values()),
                "requests_served": sum(s["requests_served"] for s in per.values()),
                "endpoints": per,
            },
        }

    return app


def serve(recommender: Recommender, host: str = "127.0.0.1", port: int = 8000, *, max_batch: int = 32,
          max_wait_s: float = 0.005, log_level: str = "info") -> None:
    """Run the app with uvicorn until interrupted."""
    import uvicorn

    uvicorn.run(create_app(recommender, max_batch=max_batch, max_wait_s=max_wait_s), host=host, port=port, log_level=log_level)
