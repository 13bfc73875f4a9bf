"""The web service: a JSON API over one run and the single page that uses it.

Routes: `GET /` (the page), `GET /static/*` (its script and style, all local), `GET /api/health`,
`GET /api/model`, `POST /api/predict` (multipart, one or more DICOM/PNG/JPEG files). docs/serve.md has the
JSON shapes and the safety rules: size cap while streaming, type from content, files only in a per-request
temporary folder deleted afterwards, no patient data in answers or logs.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, AsyncIterator

import anyio
import anyio.to_thread
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel
from starlette.requests import ClientDisconnect

from medclf.serve.predictor import ServeModel
from medclf.serve.uploads import UploadError, receive_uploads

STATIC_DIR = Path(__file__).resolve().parent / "static"
DEFAULT_MAX_UPLOAD_MB = 20.0
DEFAULT_MAX_FILES = 16
# Requests decoded and run at once; the others wait with their files on disk, not in memory. Two keep the model
# thread busy (one request decodes while the other runs the model) and bound the decoding memory of all requests
# together to two images at the pixel limit, however many clients upload at once.
DEFAULT_MAX_CONCURRENT = 2
DEFAULT_UPLOAD_TIMEOUT_S = 60.0  # a whole request body; 20 MiB in 60 s needs only ~0.35 MiB/s
log = logging.getLogger("medclf.serve")

# The page loads nothing from elsewhere; images arrive as data: URIs in the JSON.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
                               "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class _DropRecords(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return False


@contextlib.asynccontextmanager
async def _quiet_dicom(app: FastAPI) -> AsyncIterator[None]:
    """While the app runs, pydicom's warnings are dropped: they quote header values (patient names, IDs)."""
    logger, drop = logging.getLogger("pydicom"), _DropRecords()
    logger.addFilter(drop)
    saved = list(warnings.filters)
    warnings.filterwarnings("ignore", module=r"pydicom(\.|$)")
    try:
        yield
    finally:
        logger.removeFilter(drop)
        warnings.filters[:] = saved


class ErrorAnswer(BaseModel):
    detail: str


# The body is parsed by `receive_uploads` from the raw stream (so the size cap holds while reading), not by a
# FastAPI `File` parameter: its shape and the refusals are declared here so the OpenAPI schema shows them, with
# the bounds the server enforces (no file, or more than `max_files`, is a 400), so the schema allows no body
# that the server refuses for its file count.
def predict_body(max_files: int) -> dict[str, Any]:
    files = {"type": "array", "items": {"type": "string", "format": "binary"}, "minItems": 1, "maxItems": max_files,
             "description": "DICOM (Part 10), PNG or JPEG files; any field name is accepted"}
    return {"required": True, "content": {"multipart/form-data": {"schema": {
        "type": "object", "required": ["files"], "properties": {"files": files}}}}}


PREDICT_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorAnswer, "description": "a file that cannot be decoded, is empty or too large in pixels; "
                                               "too many files; a malformed multipart body"},
    408: {"model": ErrorAnswer, "description": "the request body did not arrive within the upload timeout"},
    413: {"model": ErrorAnswer, "description": "the request body is larger than the upload limit"},
    415: {"model": ErrorAnswer, "description": "a file that is not DICOM, PNG or JPEG, or a body that is not "
                                               "multipart/form-data"},
}


class SecurityHeaders:
    """Pure ASGI middleware adding SECURITY_HEADERS to every response (no body buffering, unlike
    `@app.middleware("http")`, so the upload stream reaches the endpoint untouched)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.headers = [(k.lower().encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                present = {k.lower() for k, _ in message.get("headers", [])}
                extra = [(k, v) for k, v in self.headers if k not in present]
                message = {**message, "headers": list(message.get("headers", [])) + extra}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def create_app(predictor: ServeModel, max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
               max_files: int = DEFAULT_MAX_FILES, upload_dir: str | Path | None = None,
               max_concurrent: int = DEFAULT_MAX_CONCURRENT,
               upload_timeout_s: float = DEFAULT_UPLOAD_TIMEOUT_S) -> FastAPI:
    """The ASGI app for one loaded run.

    `max_upload_mb` caps a request body (all its files together); `upload_dir` is where per-request
    temporary folders are made (default: the system temporary directory); `max_concurrent` requests are
    decoded and predicted at once, the others wait; a body not received within `upload_timeout_s` gets 408.
    """
    if not max_upload_mb > 0:
        raise ValueError(f"max_upload_mb must be positive, got {max_upload_mb}")
    if max_concurrent < 1 or not upload_timeout_s > 0:
        raise ValueError(f"max_concurrent must be >= 1 and upload_timeout_s > 0, got {max_concurrent}, "
                         f"{upload_timeout_s}")
    max_bytes = int(max_upload_mb * 2**20)
    # Its own limiter, not the threadpool's (40 threads): waiting requests hold no thread and no decoded pixels.
    model_slots = anyio.CapacityLimiter(max_concurrent)
    # docs_url=None: Swagger UI would load its script from a CDN; the OpenAPI schema stays available.
    app = FastAPI(title="medclf", lifespan=_quiet_dicom, docs_url=None, redoc_url=None,
                  openapi_url="/api/openapi.json")
    info = predictor.info() | {"max_upload_mb": max_upload_mb, "max_files": max_files,
                               "max_concurrent": max_concurrent, "upload_timeout_s": upload_timeout_s}

    app.add_middleware(SecurityHeaders)

    @app.exception_handler(UploadError)
    async def upload_error(request: Request, err: UploadError) -> JSONResponse:
        log.info("predict refused: %d %s", err.status, _kind_of(err))
        return JSONResponse({"detail": err.message}, status_code=err.status)

    @app.get("/api/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "model": info["name"]}

    @app.get("/api/model")
    def model() -> dict[str, Any]:
        return info

    @app.post("/api/predict", openapi_extra={"requestBody": predict_body(max_files)}, responses=PREDICT_ERRORS)
    async def predict(request: Request, heatmap: bool = True, image: bool = True) -> Any:
        """Probability, decision, heatmap and OOD score for each uploaded file (multipart/form-data)."""
        start = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="medclf-serve-", dir=upload_dir) as folder:
            try:
                uploads = await receive_uploads(request.headers, request.stream(), Path(folder), max_bytes,
                                                max_files, upload_timeout_s)
            except ClientDisconnect:  # the client went away mid-upload: nobody to answer, nothing to log
                return JSONResponse({"detail": "client disconnected"}, status_code=400)
            if not uploads:
                raise UploadError(400, "no file in the request: send one or more files as multipart/form-data")
            results = await anyio.to_thread.run_sync(predictor.predict, uploads, heatmap, image,
                                                     limiter=model_slots)
        ms = (time.perf_counter() - start) * 1000
        # sizes and timings only: file names can carry patient names
        log.info("predict: %d file(s), %d bytes, %.0f ms", len(uploads), sum(u.size for u in uploads), ms)
        return {"model": info["name"], "threshold": info["threshold"], "results": results, "elapsed_ms": round(ms, 1)}

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    return app


def _kind_of(err: UploadError) -> str:
    """A log line's worth of why, without the file name that starts most messages."""
    kinds = {400: "bad request", 408: "timed out", 413: "too large", 415: "unsupported type"}
    return kinds.get(err.status, "error")
