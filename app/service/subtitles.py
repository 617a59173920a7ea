"""Segments and subtitles (SRT, WebVTT) from a transcript's word timings: one module for every route.

Segmentation (used for OpenAI's `verbose_json` segments and for subtitle cues, so a cue is a segment):
- segments never span two utterances: where a file pauses is the endpointer's decision (app/speech/endpoint.py,
  DS_ENDPOINT_SILENCE_MS), the same one that cuts a stream of the same audio into utterances;
- inside an utterance, a new segment starts where adding the next word would make the segment longer than `MAX_SEGMENT_SECONDS` (7 s, the usual
  subtitle maximum) or its text wider than `MAX_LINES` lines of `MAX_LINE_CHARS` characters (2 x 42, the common
  broadcast and streaming guideline).
A word longer than a whole line (no real word is; noise from a random-weight model can be) gets a cue of its
own on one over-long line: words are never broken, so a cue's lines joined with spaces are always its text.

Timestamps: SRT `HH:MM:SS,mmm`, WebVTT `HH:MM:SS.mmm` (hours always written, at least two digits), rounded to the
millisecond. A cue runs from its first word's start to its last word's end; cues never overlap because a word
ends before the next one starts. WebVTT cue text escapes `&`, `<` and `>` as the format requires; SRT is written
as is (UTF-8).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from app.speech.decoding.timings import Word

MAX_SEGMENT_SECONDS = 7.0
MAX_LINE_CHARS = 42
MAX_LINES = 2

SRT_MEDIA_TYPE = "application/x-subrip"
VTT_MEDIA_TYPE = "text/vtt"


@dataclass(frozen=True)
class Segment:
    """Consecutive words shown (or reported) together; `lines` is the text wrapped for a subtitle."""

    words: tuple[Word, ...]
    lines: tuple[str, ...]

    @property
    def start(self) -> float:
        return self.words[0].start

    @property
    def end(self) -> float:
        return self.words[-1].end

    @property
    def text(self) -> str:
        return " ".join(word.word for word in self.words)


def wrap(words: Sequence[str], max_chars: int = MAX_LINE_CHARS) -> list[str]:
    """Greedy wrap into lines of at most `max_chars` (a longer single word gets a line of its own)."""
    lines: list[str] = []
    line = ""
    for word in words:
        if line and len(line) + 1 + len(word) <= max_chars:
            line += " " + word
        else:
            if line:
                lines.append(line)
            line = word
    if line:
        lines.append(line)
    return lines


def balanced_lines(
    words: Sequence[str], max_chars: int = MAX_LINE_CHARS, max_lines: int = MAX_LINES
) -> list[str]:
    """Lines for one cue: one line if it fits, else two of similar length (easier to read than a full first
    line and a stub), else the greedy wrap."""
    lines = wrap(words, max_chars)
    if len(lines) != 2 or max_lines < 2:
        return lines
    best: tuple[int, int] | None = None  # (longer line, split index)
    for split in range(1, len(words)):
        first, second = " ".join(words[:split]), " ".join(words[split:])
        if len(first) <= max_chars and len(second) <= max_chars:
            longer = max(len(first), len(second))
            if best is None or longer < best[0]:
                best = (longer, split)
    if best is None:
        return lines
    return [" ".join(words[: best[1]]), " ".join(words[best[1] :])]


def segment_utterances(utterances: Iterable[Sequence[Word]]) -> list[Segment]:
    """Each utterance's words split into segments (a segment never spans two utterances)."""
    return [segment for words in utterances for segment in segment_words(words)]


def segment_words(
    words: Iterable[Word],
    *,
    max_seconds: float = MAX_SEGMENT_SECONDS,
    max_chars: int = MAX_LINE_CHARS,
    max_lines: int = MAX_LINES,
) -> list[Segment]:
    """Split one utterance's timed words into segments at `max_seconds` and where the text would not fit."""
    segments: list[Segment] = []
    current: list[Word] = []

    def close() -> None:
        if current:
            lines = balanced_lines([w.word for w in current], max_chars, max_lines)
            segments.append(Segment(tuple(current), tuple(lines)))
            current.clear()

    for word in words:
        if current and (
            len(word.word) > max_chars
            or len(current[-1].word) > max_chars
            or word.end - current[0].start > max_seconds
            or len(wrap([w.word for w in current] + [word.word], max_chars)) > max_lines
        ):
            close()
        current.append(word)
    close()
    return segments


def _timestamp(seconds: float, separator: str) -> str:
    millis = max(0, round(seconds * 1000))
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"


def srt_timestamp(seconds: float) -> str:
    """`HH:MM:SS,mmm` (SubRip)."""
    return _timestamp(seconds, ",")


def vtt_timestamp(seconds: float) -> str:
    """`HH:MM:SS.mmm` (WebVTT)."""
    return _timestamp(seconds, ".")


def _vtt_escape(line: str) -> str:
    return line.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def to_srt(segments: Sequence[Segment]) -> str:
    """SubRip: numbered cues from 1, each followed by a blank line; no cues → an empty document."""
    cues = []
    for number, seg in enumerate(segments, start=1):
        lines = "\n".join(seg.lines)
        cues.append(f"{number}\n{srt_timestamp(seg.start)} --> {srt_timestamp(seg.end)}\n{lines}\n")
    return "\n".join(cues) + ("\n" if cues else "")


def to_vtt(segments: Sequence[Segment]) -> str:
    """WebVTT: the `WEBVTT` header, a blank line, then cues separated by blank lines."""
    cues = []
    for seg in segments:
        lines = "\n".join(_vtt_escape(line) for line in seg.lines)
        cues.append(f"{vtt_timestamp(seg.start)} --> {vtt_timestamp(seg.end)}\n{lines}\n")
    return "WEBVTT\n\n" + "\n".join(cues)


def srt(utterances: Iterable[Sequence[Word]]) -> str:
    """SRT of a transcript's words, by utterance, segmented as above."""
    return to_srt(segment_utterances(utterances))


def vtt(utterances: Iterable[Sequence[Word]]) -> str:
    """WebVTT of a transcript's words, by utterance, segmented as above."""
    return to_vtt(segment_utterances(utterances))
