"""Valid reference files, 16 kHz tones as soundfile writes them, that the bad-input and fuzz tests patch, cut
and mutate."""

from __future__ import annotations

from app.speech.audio import SAMPLE_RATE
from tests.support.audio import encode, tone

WAV = encode(tone(SAMPLE_RATE), SAMPLE_RATE)  # canonical 44-byte header
FLAC = encode(tone(SAMPLE_RATE), SAMPLE_RATE, "FLAC")
VORBIS = encode(tone(SAMPLE_RATE, 3.0), SAMPLE_RATE, "OGG", "VORBIS")
OPUS = encode(tone(48000, 3.0), 48000, "OGG", "OPUS")
