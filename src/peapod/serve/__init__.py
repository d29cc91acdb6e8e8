"""Serving a trained model: the `Recommender` Python API, the HTTP app and its micro-batcher.

`peapod.serve.recommender` needs only the core dependencies; `peapod.serve.app` needs the `serve`
extra (fastapi, uvicorn).
"""
