"""HTTPS endpoint for wearable data on the hospital's internal network (Starlette, served by uvicorn).

    POST /streams/<device>/<patient-ref>      body: a FHIR Observation, an Open mHealth data point, or a JSON array

answers only once the outcome is final: 201 with the samples stored after the store committed;
422 with the reason when the message is malformed (quarantined); 429 with Retry-After when the device
is over its rate limit (refused); 413 when it is too large; 503 with Retry-After when the store's queue
is full (nothing recorded: send it again). `GET /streams/health` answers 200 with the store's counts.
"""

from __future__ import annotations

import asyncio
import ssl

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from pipelines.errors import SignalError

from .intake import RATE_LIMITED, Outcome, StreamIntake
from .messages import check_size
from .settings import HttpSettings

STREAM_PATH = "/streams"
VIA = "http"  # the receiver's name in the quarantine and the audit log
RETRY_BUSY_S = 1
STATUS = {Outcome.STORED: 201, Outcome.QUARANTINED: 422, Outcome.REFUSED: 429, Outcome.BUSY: 503}


def stream_app(intake: StreamIntake) -> Starlette:
    """The ASGI app; one request is one message."""
    limit = intake.config.max_message_bytes

    async def receive(request: Request) -> JSONResponse:
        device = request.path_params["device"]
        body = b""
        async for chunk in request.stream():  # read within the limit, never the whole of a hostile body
            body += chunk
            try:
                check_size(len(body), max_bytes=limit)
            except SignalError as e:  # quarantined, counted and audited like any malformed message
                await asyncio.to_thread(intake.quarantine, device=device, via=VIA, error=e, done=lambda *_: None)
                return JSONResponse({"error": f"the body {e}", "reason": e.reason}, status_code=413)
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[tuple[Outcome, str | None]] = loop.create_future()

        def done(outcome: Outcome, reason: str | None) -> None:  # called from the writer thread or right here
            loop.call_soon_threadsafe(lambda: answer.done() or answer.set_result((outcome, reason)))

        intake.offer(device=device, patient=request.path_params["patient"], payload=body, via=VIA, done=done)
        outcome, reason = await answer
        headers = {}
        if outcome is Outcome.BUSY:
            headers["Retry-After"] = str(RETRY_BUSY_S)
        elif reason == RATE_LIMITED:
            headers["Retry-After"] = str(intake.limits.retry_after_s(intake.config.max_samples_per_message))
        return JSONResponse({"outcome": outcome.value, "reason": reason}, status_code=STATUS[outcome], headers=headers)

    async def health(request: Request) -> JSONResponse:
        return JSONResponse(await asyncio.to_thread(intake.store.counts))

    return Starlette(routes=[Route(f"{STREAM_PATH}/health", health, methods=["GET"]),
                             Route(STREAM_PATH + "/{device}/{patient}", receive, methods=["POST"])])


def serve(settings: HttpSettings, intake: StreamIntake) -> None:
    """Serve the endpoint until interrupted: HTTPS with `cert`/`key` (client certificates of `ca_cert` when set)."""
    import uvicorn

    host, port = settings.host_port
    tls: dict[str, object] = {}
    if settings.cert is not None and settings.key is not None:
        tls = {"ssl_certfile": str(settings.cert), "ssl_keyfile": str(settings.key)}
        if settings.ca_cert is not None:
            tls |= {"ssl_ca_certs": str(settings.ca_cert), "ssl_cert_reqs": ssl.CERT_REQUIRED}
    uvicorn.run(stream_app(intake), host=host, port=port, log_level="warning", **tls)  # type: ignore[arg-type]
