"""The HTTP API: `create_app(recommender) -> FastAPI`, served by `peapod serve RUN_DIR` (uvicorn).

Endpoints (JSON; raw dataset ids; OpenAPI at /docs):

* `POST /recommend` `{user | history, k, exclude_history, explain}` -> the k best items with their
  exact log-likelihoods (and an explanation of each when `explain`).
* `POST /rank` `{user, candidates[, history]}` -> the candidates sorted by exact log-likelihood.
* `POST /explain` `{user, item[, history]}` -> a generated sentence.
* `GET /health` -> the model being served and the micro-batching counters.

Status codes: 404 unknown user without a history, unknown item; 422 malformed body or a value out of
bounds (k 1..100 and at most the catalogue, history 1..200 items, candidates 1..1000); 401 a missing or
wrong API key (when the server has one; /health stays open); 413 a body over `max_body_bytes` (refused
before it is read); 503 a full queue (with Retry-After); 504 no answer within `timeout_s`; 500 a fault
of the server (never 422).

Concurrent requests of one kind are micro-batched (`MicroBatcher`, one per endpoint kind, started in
the lifespan): the model runs once per batch, a bad request fails alone, and a batch whose model call
fails is retried request by request. A request whose client disconnects is dropped before it is
computed. A recommend batch holds at most `max_explanations` explanations, and explanations are
generated a chunk at a time, so a request for many of them does not starve the other endpoints.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import time
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator

import peapod
from peapod.serve.batching import BatcherClosed, Busy, MicroBatcher, TimedOut
from peapod.serve.inputs import InvalidRequest
from peapod.serve.recommender import MAX_CANDIDATES, MAX_HISTORY, MAX_K, Recommender, UnknownItem, UnknownUser

__all__ = ["ServeLimits", "create_app", "serve"]

log = logging.getLogger("peapod.serve")
OPEN_PATHS = ("/health",)  # answered without an API key


class ServeLimits(BaseModel):
    """What one server accepts before it refuses: body size, queue length, wait, explanations per batch."""

    model_config = ConfigDict(extra="forbid")
    max_body_bytes: int = Field(1_000_000, ge=1)
    max_queue: int = Field(100, ge=1, description="queued requests per endpoint kind; beyond: 503")
    timeout_s: float = Field(120.0, gt=0, description="per request; beyond: 504")
    max_explanations: int = Field(64, ge=1, description="explanations one recommend batch may generate")


async def _refuse(send, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
    response = JSONResponse({"detail": detail}, status_code=status, headers=headers)
    await response({"type": "http"}, None, send)


class _BodyTooLarge(Exception):
    pass


class BodyLimit:
    """ASGI middleware: a body over `max_bytes` gets 413, by its Content-Length before any of it is
    read, or (chunked) as soon as the bytes received pass the limit."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        too_large = f"request body over {self.max_bytes} bytes"
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            return await _refuse(send, 413, too_large)
        received, started = 0, False

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _BodyTooLarge
            return message

        async def tracking_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _BodyTooLarge:
            if not started:
                await _refuse(send, 413, too_large)


class ApiKey:
    """ASGI middleware: every path but `OPEN_PATHS` needs `Authorization: Bearer <key>` (compared in
    constant time); 401 otherwise."""

    def __init__(self, app, key: str):
        self.app, self.key = app, key.encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            return await self.app(scope, receive, send)
        given = dict(scope["headers"]).get(b"authorization", b"")
        scheme, _, token = given.partition(b" ")
        if scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(), self.key):
            return await _refuse(send, 401, "missing or wrong API key (Authorization: Bearer <key>)", {"WWW-Authenticate": "Bearer"})
        return await self.app(scope, receive, send)

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
    if isinstance(e, InvalidRequest):
        raise HTTPException(status_code=422, detail=str(e))
    if isinstance(e, Busy):
        raise HTTPException(status_code=503, detail=str(e), headers={"Retry-After": "1"})
    if isinstance(e, BatcherClosed):
        raise HTTPException(status_code=503, detail=str(e))
    if isinstance(e, TimedOut):
        raise HTTPException(status_code=504, detail=str(e))
    log.error("request failed inside the server", exc_info=e)
    raise HTTPException(status_code=500, detail=f"internal error ({type(e).__name__}); see the server log")


def create_app(
    recommender: Recommender, *, max_batch: int = 32, max_wait_s: float = 0.005, limits: ServeLimits | None = None,
    api_key: str | None = None,
) -> FastAPI:
    """A FastAPI app serving `recommender`; its micro-batchers start and stop with the app's lifespan.
    `api_key`: required as a Bearer token on every endpoint but /health."""
    rec = recommender
    limits = limits or ServeLimits()

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

    queueing = dict(max_queue=limits.max_queue, timeout_s=limits.timeout_s)
    batchers = {
        "recommend": MicroBatcher(recommend_batch, max_batch, max_wait_s, **queueing,
                                  cost=lambda r: r.k if r.explain else 0, max_cost=limits.max_explanations),
        "rank": MicroBatcher(rank_batch, max_batch, max_wait_s, **queueing),
        "explain": MicroBatcher(explain_batch, max_batch, max_wait_s, **queueing,
                                cost=lambda r: 1, max_cost=limits.max_explanations),
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
    app.state.limits = limits
    app.add_middleware(BodyLimit, max_bytes=limits.max_body_bytes)
    if api_key:
        app.add_middleware(ApiKey, key=api_key)  # added last: runs first

    async def run(kind: str, body, request: Request):
        job = asyncio.ensure_future(batchers[kind].submit(body))
        while not job.done():  # a client that goes away cancels its request (skipped if not yet computed)
            await asyncio.wait({job}, timeout=0.1)
            if not job.done() and await request.is_disconnected():
                job.cancel()
                raise HTTPException(status_code=499, detail="client closed the request")
        try:
            return job.result()
        except Exception as e:
            _raise_http(e)

    def cold(user: str | None) -> bool:
        return user is None or not rec.known_user(user)

    not_found = {404: {"description": "unknown user (without a history) or unknown item"}}

    @app.post("/recommend", response_model=RecommendResponse, responses=not_found)
    async def recommend(body: RecommendRequest, request: Request) -> RecommendResponse:
        """The k catalogue items with the highest exact log-likelihood for a user (or a history)."""
        result = await run("recommend", body, request)
        items = [ScoredItem(item=x[0], score=x[1], explanation=x[2] if len(x) > 2 else None) for x in result]
        return RecommendResponse(user=body.user, cold_start=cold(body.user), items=items)

    @app.post("/rank", response_model=RankResponse, responses=not_found)
    async def rank(body: RankRequest, request: Request) -> RankResponse:
        """The candidates sorted by exact log-likelihood (best first)."""
        result = await run("rank", body, request)
        return RankResponse(user=body.user, cold_start=cold(body.user), items=[ScoredItem(item=i, score=s) for i, s in result])

    @app.post("/explain", response_model=ExplainResponse, responses=not_found)
    async def explain(body: ExplainRequest, request: Request) -> ExplainResponse:
        """A generated explanation (greedy decoding) of why the user would like the item."""
        text = await run("explain", body, request)
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
            "limits": {**info["limits"], **limits.model_dump()},
            "auth": "bearer" if api_key else "none",
            "batching": {
                "batches_run": sum(s["batches_run"] for s in per.values()),
                "requests_served": sum(s["requests_served"] for s in per.values()),
                "endpoints": per,
            },
        }

    return app


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(recommender: Recommender, host: str = "127.0.0.1", port: int = 8000, *, max_batch: int = 32,
          max_wait_s: float = 0.005, log_level: str = "info", limits: ServeLimits | None = None,
          api_key: str | None = None) -> None:
    """Run the app with uvicorn until interrupted."""
    import uvicorn

    limits = limits or ServeLimits()
    if not is_loopback(host) and not api_key:
        log.warning("serving on %s without an API key: anyone who can reach this address can use the model "
                    "(pass --api-key or set PEAPOD_API_KEY)", host)
    app = create_app(recommender, max_batch=max_batch, max_wait_s=max_wait_s, limits=limits, api_key=api_key)
    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_keep_alive=5)
