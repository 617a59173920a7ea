"""GET /asyncapi.json: the two websocket dialects described in AsyncAPI 3.0 (OpenAPI has no websockets).

Built from the code's own constants (rates, limits, error codes, close codes), and tests/test_asyncapi.py checks
every message a real session sends against these schemas, so the description cannot drift from the protocol.
Operations are the server's: it `receive`s what clients send and `send`s what they get.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from app.routes.vosk import VOSK_DEFAULT_RATE
from app.service.stream_protocol import FAILURE_TEXT, MAX_CONTROL_CHARS, MAX_ENDPOINT_SILENCE_MS, StreamClose
from app.speech.audio import SAMPLE_RATE
from app.speech.decoding import MAX_ALTERNATIVES
from app.speech.stream_audio import ENCODED_FORMATS, MAX_RATE, MIN_RATE

router = APIRouter(include_in_schema=False)

# Every `code` of /stream's error messages: the messages' own, the stream's end, and the controller's failures.
STREAM_ERROR_CODES = (
    "bad_message",
    "bad_config",
    "bad_frame",
    "bad_audio",
    "bad_resume",
    "resume_refused",
    "idle_timeout",
    "max_duration",
    "server_shutdown",
    *FAILURE_TEXT,
)
CLOSE_CODES = (
    "Close codes: 1000 after the final (or an idle timeout); 1001 when the server shuts down (after a final); "
    f"1011 when the model failed on this stream or a bug ended it; {int(StreamClose.TRY_AGAIN_LATER)} when "
    "DS_MAX_STREAMS streams are open. A missing or wrong API key fails the handshake with HTTP 403. Text "
    f"messages are JSON objects of at most {MAX_CONTROL_CHARS // 1024} KB."
)


def _object(required: list[str], properties: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "required": required, "properties": properties}


def _typed(kind: str, properties: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    return _object(["type", *required], {"type": {"const": kind}, **properties})


def _fields(**types: str) -> dict[str, Any]:
    """An object of these fields, each of that JSON type, all required."""
    return _object(list(types), {name: {"type": kind} for name, kind in types.items()})


STRING, NUMBER = {"type": "string"}, {"type": "number"}
COUNT = {"type": "integer", "minimum": 0}
RESUME_URL = {
    "type": "string",
    "description": "path and query to reconnect to, relative to the address connected to: `/stream`, or with "
    "DS_REPLICA_ID `/stream?replica=r1` for a load balancer to route to the replica that holds the stream",
}
WORD = _fields(word="string", start="number", end="number", confidence="number")
HOT_WORDS = {
    "description": "boosts in DeepSpeech's units: {word: boost}, 'word:boost,...', or a list of such strings",
    "oneOf": [
        {"type": "object", "additionalProperties": NUMBER},
        STRING,
        {"type": "array", "items": STRING},
    ],
}
ALTERNATIVES = {
    "type": "array",
    "items": _object(
        ["text", "confidence", "words"],
        {"text": STRING, "confidence": NUMBER, "words": {"type": "array", "items": WORD}},
    ),
}
ENDPOINT_SILENCE = {
    "type": "integer",
    "minimum": 0,
    "maximum": MAX_ENDPOINT_SILENCE_MS,
    "description": "the pause (ms) after speech that ends an utterance; 0: none (default DS_ENDPOINT_SILENCE_MS)",
}
FORMATS = ["pcm", *ENCODED_FORMATS]
RATE = {"type": "integer", "minimum": MIN_RATE, "maximum": MAX_RATE}


def _message(name: str, summary: str, payload: dict[str, Any], binary: bool = False) -> dict[str, Any]:
    content = "application/octet-stream" if binary else "application/json"
    return {"name": name, "summary": summary, "contentType": content, "payload": payload}


AUDIO = {"type": "string", "format": "binary"}
STREAM_IN = {
    "streamConfig": _message(
        "config",
        "optional first message: the audio's format and rate, biasing, N-best, resumability",
        _typed(
            "config",
            {
                "sample_rate": {**RATE, "default": SAMPLE_RATE},
                "format": {"enum": FORMATS, "default": "pcm"},
                "hot_words": HOT_WORDS,
                "phrase_list": {"type": "array", "items": STRING},
                "alternatives": {"type": "integer", "minimum": 1, "maximum": MAX_ALTERNATIVES},
                "endpoint_silence_ms": ENDPOINT_SILENCE,
                "resumable": {"type": "boolean"},
            },
        ),
    ),
    "streamResume": _message(
        "resume",
        "first message of a new connection that takes a dropped resumable stream over",
        _typed(
            "resume",
            {
                "stream_id": STRING,
                "resume_token": STRING,
                "bytes": COUNT,
            },
            ("stream_id", "resume_token", "bytes"),
        ),
    ),
    "streamAudio": _message("audio", "s16le mono PCM, or the declared container's bytes", AUDIO, binary=True),
    "streamEof": _message("eof", "the audio is over: the final follows, then the close", _typed("eof", {})),
}
UTTERANCE = _object(
    ["text", "words", "start", "end", "confidence"],
    {
        "text": STRING,
        "words": {"type": "array", "items": WORD},
        "start": NUMBER,
        "end": NUMBER,
        "confidence": NUMBER,
        "alternatives": ALTERNATIVES,
    },
)
STREAM_OUT = {
    "streamUtterance": _message(
        "utterance",
        "an utterance ended (a pause of endpoint_silence_ms, or DS_MAX_UTTERANCE_SECONDS): its words, times from "
        "the stream's start",
        _typed("utterance", UTTERANCE["properties"], tuple(UTTERANCE["required"])),
    ),
    "streamPartial": _message(
        "partial",
        "the utterance in progress, whenever its text changes",
        _typed("partial", {"text": STRING}, ("text",)),
    ),
    "streamFinal": _message(
        "final",
        "after eof: the whole stream's transcript with word timings (the N best with alternatives), and the "
        "utterance eof ended (null when a pause already ended the last one)",
        _typed(
            "final",
            {
                "text": STRING,
                "words": {"type": "array", "items": WORD},
                "confidence": NUMBER,
                "duration": NUMBER,
                "alternatives": ALTERNATIVES,
                "utterance": {"oneOf": [UTTERANCE, {"type": "null"}]},
            },
            ("text", "words", "confidence", "duration", "utterance"),
        ),
    ),
    "streamError": _message(
        "error",
        "a bad message (the stream goes on) or why the server ends the stream",
        _typed(
            "error",
            {"code": {"enum": list(STREAM_ERROR_CODES)}, "message": STRING},
            ("code", "message"),
        ),
    ),
    "streamWarning": _message(
        "warning",
        "once, and the stream goes on: decoder_limited when the audio keeps the decoder's beam full (noise to "
        "the model), so it keeps less history to bound its memory",
        _typed("warning", {"code": {"enum": ["decoder_limited"]}, "message": STRING}, ("code", "message")),
    ),
    "streamResumable": _message(
        "resumable",
        "answer to a resumable config: the id and first token to resume with, the reconnect window, and where to "
        "reconnect",
        _typed(
            "resumable",
            {
                "stream_id": STRING,
                "resume_token": STRING,
                "window": NUMBER,
                "resume_url": RESUME_URL,
            },
            ("stream_id", "resume_token", "window", "resume_url"),
        ),
    ),
    "streamAck": _message(
        "ack",
        "resumable streams: binary bytes received so far, after every frame",
        _typed("ack", {"bytes": COUNT}, ("bytes",)),
    ),
    "streamResumed": _message(
        "resumed",
        "the stream is taken over: resend audio from `bytes`; the next resume needs the new token",
        _typed(
            "resumed",
            {
                "stream_id": STRING,
                "resume_token": STRING,
                "bytes": COUNT,
                "text": STRING,
                "resume_url": RESUME_URL,
            },
            ("stream_id", "resume_token", "bytes", "text", "resume_url"),
        ),
    ),
}
VOSK_WORD = _fields(conf="number", start="number", end="number", word="string")
VOSK_IN = {
    "voskConfig": _message(
        "config",
        "optional, no reply; biasing and N-best apply before the first audio",
        _object(
            ["config"],
            {
                "config": {
                    "type": "object",
                    "properties": {
                        "sample_rate": {
                            "type": "number",
                            "minimum": MIN_RATE,
                            "maximum": MAX_RATE,
                            "default": VOSK_DEFAULT_RATE,
                        },
                        "format": {"enum": FORMATS},
                        "words": {"type": ["boolean", "integer"]},
                        "phrase_list": {
                            "type": "array",
                            "items": STRING,
                            "description": "a grammar: only these phrases' words are recognized, [unk] for "
                            "anything else",
                        },
                        "endpoint_silence_ms": ENDPOINT_SILENCE,
                        "max_alternatives": {"type": "integer", "minimum": 0, "maximum": MAX_ALTERNATIVES},
                    },
                }
            },
        ),
    ),
    "voskAudio": _message(
        "audio", "s16le mono PCM at the configured rate (8000 Hz unless configured)", AUDIO, binary=True
    ),
    "voskEof": _message("eof", "final result, then the close", _object(["eof"], {"eof": {}})),
    "voskReset": _message(
        "reset", "final result; the stream goes on with fresh state", _object(["reset"], {"reset": {}})
    ),
}
VOSK_OUT = {
    "voskPartial": _message(
        "partial",
        "after an audio frame that ended no utterance: the utterance in progress",
        _object(["partial"], {"partial": STRING}),
    ),
    "voskResult": _message(
        "result",
        "after an audio frame that ended an utterance (a pause), and after eof or reset (what was heard since "
        'the last result): words (unless `words` is off) and text; `{"text": ""}` when nothing was heard',
        _object(["text"], {"result": {"type": "array", "items": VOSK_WORD}, "text": STRING}),
    ),
    "voskAlternatives": _message(
        "alternatives",
        "instead of a result, with max_alternatives > 0",
        _object(
            ["alternatives"],
            {
                "alternatives": {
                    "type": "array",
                    "items": _object(
                        ["confidence", "result", "text"],
                        {
                            "confidence": NUMBER,
                            "text": STRING,
                            "result": {
                                "type": "array",
                                "items": _fields(start="number", end="number", word="string"),
                            },
                        },
                    ),
                }
            },
        ),
    ),
    "voskError": _message(
        "error", "a bad message, or why the stream ended", _object(["error"], {"error": STRING})
    ),
}


def _refs(channel: str, names: dict[str, Any]) -> list[dict[str, str]]:
    return [{"$ref": f"#/channels/{channel}/messages/{name}"} for name in names]


def document() -> dict[str, Any]:
    """The AsyncAPI 3.0 document of /stream and /vosk."""
    channels = {
        "stream": {
            "address": "/stream",
            "title": "this service's streaming dialect",
            "description": "Binary audio and JSON control messages in; partials, a final and errors out. "
            + CLOSE_CODES,
            "messages": {**STREAM_IN, **STREAM_OUT},
        },
        "vosk": {
            "address": "/vosk",
            "title": "Vosk server's protocol (alphacep/vosk-server websocket/asr_server.py)",
            "description": "Exactly one reply per client message. " + CLOSE_CODES,
            "messages": {**VOSK_IN, **VOSK_OUT},
        },
    }
    operations = {
        "receiveStream": {
            "action": "receive",
            "channel": {"$ref": "#/channels/stream"},
            "messages": _refs("stream", STREAM_IN),
        },
        "sendStream": {
            "action": "send",
            "channel": {"$ref": "#/channels/stream"},
            "messages": _refs("stream", STREAM_OUT),
        },
        "receiveVosk": {
            "action": "receive",
            "channel": {"$ref": "#/channels/vosk"},
            "messages": _refs("vosk", VOSK_IN),
        },
        "sendVosk": {
            "action": "send",
            "channel": {"$ref": "#/channels/vosk"},
            "messages": _refs("vosk", VOSK_OUT),
        },
    }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "DeepSpeech transcription service: websocket streaming",
            "version": "0.1.0",
            "description": "With DS_API_KEY set, send `Authorization: Bearer <key>` or `?api_key=<key>` (browsers "
            "cannot set headers on a websocket). The HTTP routes are in /openapi.json (/docs).",
        },
        "defaultContentType": "application/json",
        "channels": channels,
        "operations": operations,
    }


@router.get("/asyncapi.json")
async def asyncapi() -> dict[str, Any]:
    """The websocket dialects' description (linked from /docs)."""
    return document()
