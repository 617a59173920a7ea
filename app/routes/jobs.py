"""Batch jobs over HTTP: POST /jobs (202), GET /jobs/{id}, GET /jobs/{id}/result, DELETE /jobs/{id}, GET /jobs.

The use cases are app/service/jobs.py's; a worker (app/service/job_runner.py) runs each job through the same
upload use case as /transcribe, so a job's result is what /transcribe answers for the file.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from anyio.to_thread import run_sync
from fastapi import APIRouter, File, Form, Query, UploadFile
from fastapi.responses import JSONResponse, Response

from app.service import subtitles
from app.service.jobs import JobRequest, check_callback_url
from app.service.rendering import TEXT_MEDIA_TYPE
from app.speech.audio import probe_duration
from app.speech.decoding import MAX_ALTERNATIVES, parse_hot_words
from app.web.deps import ServicesDep

router = APIRouter(tags=["jobs"])

MEDIA_TYPES = {"text": TEXT_MEDIA_TYPE, "srt": subtitles.SRT_MEDIA_TYPE, "vtt": subtitles.VTT_MEDIA_TYPE}


@router.post("/jobs", status_code=202)
async def submit_job(
    services: ServicesDep,
    file: Annotated[UploadFile, File(description="audio, as for /transcribe")],
    hot_words: Annotated[list[str] | None, Query(description="`word:boost,...`, as for /transcribe")] = None,
    alternatives: Annotated[int, Query(ge=1, le=MAX_ALTERNATIVES, description="the N best transcripts")] = 1,
    callback_url: Annotated[
        str | None, Form(description="POSTed {id, status} when the job ends; its host must be in DS_JOB_CALLBACK_HOSTS")
    ] = None,
) -> dict[str, Any]:
    """Queue a file for transcription by a worker; poll GET /jobs/{id} (or wait for the callback)."""
    jobs = services.jobs
    hot = services.engine.decoder.check_options(hot_words=parse_hot_words(hot_words), alternatives=alternatives)
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


@router.get("/jobs")
async def list_jobs(
    services: ServicesDep,
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> dict[str, Any]:
    """Jobs, newest first, a page at a time."""
    return await services.jobs.list(offset, limit)


@router.get("/jobs/{job_id}")
async def get_job(services: ServicesDep, job_id: str) -> dict[str, Any]:
    """Status (queued, running, done, failed, cancelled), progress, audio seconds, times, and the error."""
    return await services.jobs.view(job_id)


@router.get("/jobs/{job_id}/result", response_model=None)
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


@router.delete("/jobs/{job_id}", status_code=204)
async def delete_job(services: ServicesDep, job_id: str) -> Response:
    """Cancel a queued or running job and delete its audio and result; the job is a 404 from then on."""
    await services.jobs.cancel(job_id)
    return Response(status_code=204)
