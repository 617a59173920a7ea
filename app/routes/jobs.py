"""Batch jobs over HTTP: POST /jobs (202), GET /jobs/{id}, GET /jobs/{id}/result, DELETE /jobs/{id}, GET /jobs.

The use cases are app/service/jobs.py's; a worker (app/service/job_runner.py) runs each job through the same
upload use case as /transcribe, so a job's result is what /transcribe answers for the file.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from anyio.to_thread import run_sync
from fastapi import APIRouter, File, Form, Query, UploadFile
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel

from app.service import subtitles
from app.service.jobs import JobRequest, check_callback_url
from app.service.rendering import TEXT_MEDIA_TYPE
from app.speech.audio import probe_duration
from app.speech.decoding import MAX_ALTERNATIVES, parse_hot_words
from app.web.deps import ServicesDep

router = APIRouter(tags=["jobs"])


class ErrorMessage(BaseModel):
    detail: str


class InvalidRequest(BaseModel):
    """422: a message, or FastAPI's list of field errors (a missing `file` field)."""

    detail: str | list[dict[str, Any]]


def _responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {
        status: {"model": InvalidRequest if status == 422 else ErrorMessage, "description": ERRORS[status]}
        for status in statuses
    }


ERRORS = {
    400: "empty audio, or a body that is not multipart/form-data",
    401: "DS_API_KEY is set and the request lacks that key",
    404: "no such job: never submitted, deleted, or expired (DS_JOB_TTL_SECONDS)",
    409: "the job is not done: it has no result (yet)",
    413: "upload over DS_MAX_UPLOAD_BYTES, or audio whose header says it is longer than DS_MAX_AUDIO_SECONDS",
    415: "a file that is not audio this service decodes",
    422: "invalid hot words, alternatives or callback_url (its host must be in DS_JOB_CALLBACK_HOSTS)",
    503: "jobs are off (no DS_REDIS_URL), Redis cannot be reached or DS_JOB_MAX_QUEUED jobs wait (with "
    "Retry-After), or the server is shutting down",
}

MEDIA_TYPES = {"text": TEXT_MEDIA_TYPE, "srt": subtitles.SRT_MEDIA_TYPE, "vtt": subtitles.VTT_MEDIA_TYPE}


@router.post("/jobs", status_code=202, responses=_responses(400, 401, 413, 415, 422, 503))
async def submit_job(
    services: ServicesDep,
    file: Annotated[UploadFile, File(description="audio, as for /transcribe")],
    hot_words: Annotated[list[str] | None, Query(description="`word:boost,...`, as for /transcribe")] = None,
    alternatives: Annotated[int, Query(ge=1, le=MAX_ALTERNATIVES, description="the N best transcripts")] = 1,
    callback_url: Annotated[
        str | None,
        Form(description="POSTed {id, status} when the job ends; its host must be in DS_JOB_CALLBACK_HOSTS"),
    ] = None,
) -> dict[str, Any]:
    """Queue a file for transcription by a worker; poll GET /jobs/{id} (or wait for the callback)."""
    jobs = services.jobs
    hot = services.engine.decoder.check_options(
        hot_words=parse_hot_words(hot_words), alternatives=alternatives
    )
    if callback_url:
        check_callback_url(callback_url, services.settings.job_callback_hosts)
    data = await file.read()
    seconds = await run_sync(probe_duration, data, services.settings.max_audio_seconds)
    request = JobRequest(
        hot_words=hot.as_dict() or None,
        alternatives=alternatives,
        callback_url=callback_url or None,
        filename=file.filename or "",
        audio_seconds=seconds,
    )
    return await jobs.submit(data, request)


@router.get("/jobs", responses=_responses(401, 503))
async def list_jobs(
    services: ServicesDep,
    offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> dict[str, Any]:
    """Jobs, newest first, a page at a time."""
    return await services.jobs.list(offset, limit)


@router.get("/jobs/{job_id}", responses=_responses(401, 404, 503))
async def get_job(services: ServicesDep, job_id: str) -> dict[str, Any]:
    """Status (queued, running, done, failed, cancelled), progress, audio seconds, times, and the error."""
    return await services.jobs.view(job_id)


@router.get(
    "/jobs/{job_id}/result",
    response_model=None,
    responses={
        200: {
            "description": "`format=json` (default): /transcribe's JSON; `text`, `srt`, `vtt`: as /transcribe's",
            "content": {
                "application/json": {},
                **{media: {"schema": {"type": "string"}} for media in MEDIA_TYPES.values()},
            },
        },
        **_responses(401, 404, 409, 503),
    },
)
async def get_job_result(
    services: ServicesDep,
    job_id: str,
    format: Annotated[Literal["json", "text", "srt", "vtt"], Query(description="as /transcribe's")] = "json",
) -> Response:
    """Exactly what /transcribe answers for the job's file (409 until the job is done)."""
    result = await services.jobs.result(job_id)
    if format == "json":
        return JSONResponse(result["json"])
    return Response(result[format], media_type=MEDIA_TYPES[format])


@router.delete("/jobs/{job_id}", status_code=204, responses=_responses(401, 404, 503))
async def delete_job(services: ServicesDep, job_id: str) -> Response:
    """Cancel a queued or running job and delete its audio and result; the job is a 404 from then on."""
    await services.jobs.cancel(job_id)
    return Response(status_code=204)
