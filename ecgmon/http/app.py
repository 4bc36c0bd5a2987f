"""The FastAPI application: its routes, the bearer-token check, the upload-size limit and the
error answers (``{"error": "<one line>"}`` with a 4xx for every bad request or file; an
internal error is a 500 with one line, never a traceback)."""

from __future__ import annotations

import logging
import time
from typing import Annotated, Any

from fastapi import Depends, FastAPI, File, HTTPException, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from ecgmon.http.analyze import Answer, EcgRequest, PcgRequest, analyze_ecg, analyze_pcg, draw_beat
from ecgmon.http.face import HttpFace
from ecgmon.http.pictures import draw_segment
from ecgmon.http.pool import PoolFull, WorkerCrashed
from ecgmon.http.results import EcgAnalysis, ErrorOut, PcgAnalysis
from ecgmon.http.security import token_matches
from ecgmon.http.uploads import Part, UploadError
from ecgmon.schema import StreamStatus

log = logging.getLogger("ecgmon.http")

# Room for the multipart envelope around the files themselves.
MULTIPART_SLACK = 1 << 16
_ERRORS = {code: {"model": ErrorOut} for code in (400, 401, 404, 413, 415, 422, 429, 503)}


def _error(status: int, text: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": text}, status_code=status, headers=headers)


class BodyLimit:
    """Refuses a request body larger than ``max_bytes`` with 413 before it is parsed: by its
    Content-Length at once, or as soon as the bytes received pass the limit."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("method") not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        text = f"upload larger than the limit of {self.max_bytes / 1e6:g} MB ([http] max_upload_mb)"
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes + MULTIPART_SLACK:
            await _error(413, text)(scope, receive, send)
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > self.max_bytes + MULTIPART_SLACK:
                await _error(413, text)(scope, receive, send)
                return
            if not message.get("more_body", False):
                break
        sent = False

        async def replay() -> dict:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def create_app(face: HttpFace) -> Any:
    """The ASGI application (FastAPI inside the upload-size limit)."""
    app = FastAPI(
        title="ecgmon",
        description="The HTTP face of the ecgmon monitoring daemon: analyse an ECG or heart-sound file with the "
                    "live pipeline and models, read the live streams, health and metrics.",
        version="1",
    )
    app.state.face = face

    async def authorised(request: Request) -> None:
        if face.token is not None and not token_matches(request.headers.get("authorization"), face.token):
            raise HTTPException(401, "missing or wrong bearer token: send 'Authorization: Bearer <token>'",
                                headers={"WWW-Authenticate": "Bearer"})

    guarded = [Depends(authorised)]

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, err: StarletteHTTPException) -> JSONResponse:
        return _error(err.status_code, str(err.detail), getattr(err, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def bad_request(_: Request, err: RequestValidationError) -> JSONResponse:
        first = err.errors()[0] if err.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("body", "query"))
        return _error(400, f"bad request: {where}: {first.get('msg', 'invalid')}")

    @app.exception_handler(Exception)
    async def internal(_: Request, err: Exception) -> JSONResponse:
        # A bug: one line for the client, the traceback only in the server's debug log.
        log.error("internal error answering a request: %s: %s", type(err).__name__, err)
        log.debug("traceback", exc_info=err)
        return _error(500, f"internal error: {type(err).__name__}")

    @app.get("/healthz", summary="The process is up")
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz", summary="Models loaded and sources running (503 until then)", responses={503: {}})
    async def readyz() -> JSONResponse:
        why = face.not_ready()
        body = {"ready": not why, "reasons": why, "models": face.pool.model_errors}
        return JSONResponse(body, status_code=503 if why else 200)

    @app.get("/metrics", summary="Counters in the Prometheus text format", dependencies=guarded,
             response_class=Response)
    async def metrics() -> Response:
        return Response(generate_latest(face.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/streams", summary="The live streams' state, as the status message says", dependencies=guarded,
             response_model=list[StreamStatus], responses=_ERRORS)
    async def streams() -> Any:
        if not face.live:
            raise HTTPException(404, "no live streams here: this is `ecgmon serve`; run `ecgmon run --http` for them")
        return face.streams()

    @app.get("/v1/streams/{stream}", summary="One live stream's state", dependencies=guarded,
             response_model=StreamStatus, responses=_ERRORS)
    async def stream(stream: str) -> Any:
        if not face.live:
            raise HTTPException(404, "no live streams here: this is `ecgmon serve`; run `ecgmon run --http` for them")
        found = [s for s in face.streams() if s.stream == stream]
        if not found:
            known = ", ".join(s.stream for s in face.streams()) or "none"
            raise HTTPException(404, f"no stream {stream!r} (streams: {known})")
        return found[0]

    async def _run(endpoint: str, job: Any, req: Any, media: str = "application/json") -> Response:
        t0 = time.monotonic()
        status = 200
        try:
            if not face.pool.ready:
                status = 503
                return _error(503, "not ready: " + "; ".join(face.not_ready()), {"Retry-After": "5"})
            result = await face.pool.run(job, req)
            if isinstance(result, Answer):
                if result.key is not None and result.explained is not None:
                    face.explained.put(result.key, result.explained)
                result = result.body
            return Response(result, media_type=media)
        except PoolFull:
            status = 429
            return _error(429, f"busy: {face.pool.capacity} analyses running or queued; try again shortly",
                          {"Retry-After": "5"})
        except UploadError as err:
            status = err.status
            return _error(err.status, err.text)
        except WorkerCrashed as err:
            status = 422
            return _error(422, str(err))
        except Exception:
            status = 500  # a bug: the handler below answers it; counted as what it is
            raise
        finally:
            face.metrics.requests.labels(endpoint, str(status)).inc()
            face.metrics.seconds.labels(endpoint).observe(time.monotonic() - t0)

    async def _parts(files: list[UploadFile]) -> list[Part]:
        return [Part(f.filename or "upload", await f.read()) for f in files]

    @app.post("/v1/analyze", summary="Analyse an ECG file with the live pipeline", dependencies=guarded,
              response_model=EcgAnalysis, responses=_ERRORS)
    async def analyze(
        file: Annotated[list[UploadFile], File(description="a WFDB record's .hea and signal files (repeat the field), "
                                                           "a .zip of them, an .edf, or a .csv")],
        channel: Annotated[str | None, Query(description="channel index or name (default: [replay] channel)")] = None,
        fs: Annotated[float | None, Query(gt=0, description="a CSV's sample rate, Hz")] = None,
        unit: Annotated[str | None, Query(description="a CSV's unit: mV, uV or V (overrides an EDF's)")] = None,
        explain: Annotated[bool, Query(description="add each segment's attention map and the beats' "
                                                            "spectrogram-model class and Grad-CAM")] = False,
    ) -> Response:
        hc = face.config.http
        chan: int | str | None = None
        if channel is not None:
            chan = int(channel) if channel.strip().isdigit() else channel
        req = EcgRequest(await _parts(file), chan, fs, unit, explain, face.max_bytes, hc.max_duration_s)
        return await _run("analyze", analyze_ecg, req)

    @app.get("/v1/explain/{key}/segments/{k}.png", summary="A segment of an explained analysis, drawn with its "
             "attention", dependencies=guarded, response_class=Response, responses={200: {"content": {"image/png": {}}},
                                                                                   **_ERRORS})
    async def segment_png(key: str, k: int) -> Response:
        item = face.explained.get(key)
        picture = item.picture(k) if item is not None else None
        if picture is None:
            raise HTTPException(404, f"no such picture: the analysis is older than the last {face.explained.keep} "
                                     f"explained ones, or it has no segment {k}; analyse again with ?explain=true")
        return await _run("explain_png", draw_segment, picture, "image/png")

    @app.get("/v1/explain/{key}/beats/{k}.png", summary="An explained beat of an analysis, drawn with the spectrogram "
             "model's Grad-CAM", dependencies=guarded, response_class=Response,
             responses={200: {"content": {"image/png": {}}}, **_ERRORS})
    async def beat_png(key: str, k: int) -> Response:
        item = face.explained.get(key)
        picture = item.beat(k) if item is not None else None
        if picture is None:
            raise HTTPException(404, f"no such picture: the analysis is older than the last {face.explained.keep} "
                                     f"explained ones, or it has no explained beat {k}; analyse again with "
                                     f"?explain=true")
        return await _run("explain_png", draw_beat, picture, "image/png")

    @app.post("/v1/analyze/pcg", summary="Analyse a heart-sound recording (WAV, FLAC)", dependencies=guarded,
              response_model=PcgAnalysis, responses=_ERRORS)
    async def analyze_heart_sounds(file: Annotated[UploadFile, File(description="a WAV or FLAC recording")]) -> Response:
        parts = await _parts([file])
        return await _run("analyze_pcg", analyze_pcg, PcgRequest(parts[0], face.config.http.max_duration_s))

    return BodyLimit(app, face.max_bytes)

