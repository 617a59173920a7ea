"""A transcript in every shape a client asks for: the service's JSON, plain text, SubRip, WebVTT, and OpenAI's
`json` / `verbose_json`. The pydantic models double as the API description of the HTTP routes.

`verbose_json` fills Whisper-only segment fields honestly: `seek` 0 (one pass over the whole file, no 30 s
windows), `tokens` [] (no text tokenizer), `temperature` 0.0 (deterministic search), `avg_logprob` = ln of the
mean per-frame probability of the chosen token over the segment's words (their frames weighted by duration;
the mean of logs would be lower, by Jensen's inequality), `compression_ratio` = UTF-8 length / zlib length of
the segment text exactly as Whisper computes it, `no_speech_prob` 0.0 (segments are made of recognised words;
there is no separate no-speech detector).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
from pydantic import BaseModel, Field

from app.service import subtitles
from app.speech.decoding import Word
from app.speech.engine import Engine, Transcription

TEXT_MEDIA_TYPE = "text/plain"
LANGUAGE_NAMES = {
    "en": "english",
    "de": "german",
    "fr": "french",
    "es": "spanish",
    "it": "italian",
    "pt": "portuguese",
    "nl": "dutch",
    "pl": "polish",
    "ru": "russian",
    "ca": "catalan",
    "zh": "chinese",
    "ja": "japanese",
}


@dataclass(frozen=True)
class Rendered:
    """A body and its media type."""

    content: str
    media_type: str


def word_groups(result: Transcription) -> list[tuple[Word, ...]]:
    """The file's words by utterance (where the endpointer cut it): segments and cues never span two."""
    if result.utterances:
        return [utterance.transcript.words for utterance in result.utterances]
    return [result.transcript.words] if result.transcript.words else []


def render_text(result: Transcription, fmt: Literal["text", "srt", "vtt"]) -> Rendered:
    """The transcript as plain text, or as subtitles with one cue per segment (utterances, split to fit)."""
    if fmt == "srt":
        return Rendered(subtitles.srt(word_groups(result)), subtitles.SRT_MEDIA_TYPE)
    if fmt == "vtt":
        return Rendered(subtitles.vtt(word_groups(result)), subtitles.VTT_MEDIA_TYPE)
    return Rendered(result.transcript.text + "\n", TEXT_MEDIA_TYPE)


# --- POST /transcribe's JSON ---------------------------------------------------------------------------------


class WordTiming(BaseModel):
    word: str
    start: float
    end: float
    confidence: float


class Alternative(BaseModel):
    text: str
    confidence: float = Field(description="share of the final beam's score (0..1, best first)")
    words: list[WordTiming]


class UtteranceTiming(BaseModel):
    text: str
    start: float = Field(description="its first word's start, seconds from the file's start")
    end: float = Field(description="its last word's end")
    confidence: float


class TranscriptionResponse(BaseModel):
    text: str
    duration: float
    words: list[WordTiming]
    utterances: list[UtteranceTiming] = Field(
        description="the file cut at pauses (DS_ENDPOINT_SILENCE_MS), as a stream of it would be"
    )
    confidence: float
    model: str
    backend: str
    decoder: str
    processing_seconds: float
    alternatives: list[Alternative] | None = Field(
        None, description="the N best transcripts, with alternatives=N"
    )


def transcription_response(result: Transcription, duration: float, engine: Engine) -> TranscriptionResponse:
    """The service's own JSON: text, timed words, confidence, what produced it and how long it took."""
    transcript = result.transcript
    return TranscriptionResponse(
        text=transcript.text,
        duration=round(duration, 3),
        words=[WordTiming(**asdict(word)) for word in transcript.words],
        utterances=[
            UtteranceTiming(text=u.text, start=u.start, end=u.end, confidence=u.transcript.confidence)
            for u in result.utterances
        ],
        confidence=transcript.confidence,
        model=engine.model_dir.name,
        backend=engine.model.backend,
        decoder=engine.decoder.description,
        processing_seconds=round(result.processing_seconds, 3),
        alternatives=[
            Alternative(
                text=alt.text,
                confidence=alt.confidence,
                words=[WordTiming(**asdict(word)) for word in alt.words],
            )
            for alt in transcript.alternatives
        ]
        or None,
    )


# --- OpenAI's verbose_json -----------------------------------------------------------------------------------


class VerboseSegment(BaseModel):
    id: int
    seek: int
    start: float
    end: float
    text: str
    tokens: list[int]
    temperature: float
    avg_logprob: float
    compression_ratio: float
    no_speech_prob: float


class VerboseWord(BaseModel):
    word: str
    start: float
    end: float


class VerboseTranscription(BaseModel):
    task: Literal["transcribe"] = "transcribe"
    language: str
    duration: float
    text: str
    segments: list[VerboseSegment] | None = None
    words: list[VerboseWord] | None = None


class TranscriptionJson(BaseModel):
    text: str


def avg_logprob(words: Sequence[Word]) -> float:
    """ln of the duration-weighted mean word confidence (each word's confidence is already the mean per-frame
    probability of the chosen token over its frames)."""
    weights = np.array([max(w.end - w.start, 1e-6) for w in words])
    confidences = np.array([w.confidence for w in words])
    mean = float(np.sum(weights * confidences) / np.sum(weights)) if len(words) else 0.0
    return round(float(np.log(max(mean, 1e-10))), 6)


def compression_ratio(text: str) -> float:
    """Whisper's repetition check: UTF-8 length over zlib-compressed length."""
    data = text.encode("utf-8")
    return round(len(data) / len(zlib.compress(data)), 6) if data else 0.0


def verbose_json(
    result: Transcription, duration: float, granularities: Sequence[str], language: str
) -> VerboseTranscription:
    """Segments (unless only words were asked for) and, with the `word` granularity, words."""
    transcript = result.transcript
    body = VerboseTranscription(
        language=LANGUAGE_NAMES.get(language, language), duration=round(duration, 3), text=transcript.text
    )
    if not granularities or "segment" in granularities:
        body.segments = [
            VerboseSegment(
                id=i,
                seek=0,
                start=round(seg.start, 3),
                end=round(seg.end, 3),
                text=seg.text,
                tokens=[],
                temperature=0.0,
                avg_logprob=avg_logprob(seg.words),
                compression_ratio=compression_ratio(seg.text),
                no_speech_prob=0.0,
            )
            for i, seg in enumerate(subtitles.segment_utterances(word_groups(result)))
        ]
    if "word" in granularities:
        body.words = [
            VerboseWord(word=w.word, start=round(w.start, 3), end=round(w.end, 3)) for w in transcript.words
        ]
    return body
