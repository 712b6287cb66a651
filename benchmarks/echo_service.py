"""A do-nothing BentoML service with the scoring service's request shape: the latency floor.

It parses and validates the same request model as ``serving.service`` and answers at once,
so ``bench_service.py`` can show what the server itself costs on this machine.
"""

from __future__ import annotations

import bentoml
from starlette.responses import JSONResponse

from serving.online import RequestError, ScoreRequest


@bentoml.service(name="repurchase-echo", workers=1, threads=2, traffic={"timeout": 60, "max_concurrency": 64})
class EchoService:
    """Answers a score request with empty rows; no model."""

    @bentoml.api(route="/score")
    async def score(self, request: ScoreRequest, /) -> dict:
        try:
            request.check()
        except RequestError as exc:
            return JSONResponse({"error": str(exc)}, status_code=exc.status)
        ids = request.customer_ids or [c.customer_id for c in request.customers]
        return {"scores": [{"customer_id": i} for i in ids], "unknown_ids": [], "model_version": "echo"}
