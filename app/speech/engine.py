"""The loaded service: model directory + acoustic model + decoder, and the two ways audio goes through them."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from app.settings import Settings
from app.speech.decoding import Decoder, Grammar, HotWords, Transcript, build_decoder
from app.speech.endpoint import EndpointConfig, Endpointer
from app.speech.features import context_window_blocks, mfcc
from app.speech.model_dir import ModelDirectory, load_model_directory
from app.speech.runtime import AcousticModel, BatchingModel, LstmState, load_acoustic_model
from app.speech.session import StreamSession
from app.speech.utterances import Utterance, UtteranceDecoder

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Transcription:
    transcript: Transcript
    duration: float  # seconds of audio
    processing_seconds: float
    utterances: tuple[Utterance, ...] = ()  # where the endpointer cut the file, as a stream of it is cut


class Engine:
    """Everything loaded once at startup and shared by all requests and streams (each with its own state)."""

    def __init__(
        self,
        model_dir: ModelDirectory,
        model: AcousticModel,
        decoder: Decoder,
        stream_model: AcousticModel | None = None,
        endpoints: EndpointConfig | None = None,
    ) -> None:
        self.model_dir = model_dir
        self.endpoints = endpoints or EndpointConfig()  # the default; a stream may ask for its own
        self.model = model  # whole files (transcribe), in the caller's thread
        self.stream_model = model if stream_model is None else stream_model  # streams' 16-step chunks
        self.decoder = decoder
        self.load_seconds: float | None = None  # set by load()

    @classmethod
    def load(cls, settings: Settings) -> Engine:
        started = time.monotonic()
        model_dir = load_model_directory(settings.model_dir, verify_hashes=settings.verify_model_hashes)
        model = load_acoustic_model(
            model_dir,
            settings.backend,
            settings.compute_units,
            settings.numpy_threads,
            coreml_cache_dir=settings.coreml_cache_dir,
            coreml_window_steps=settings.coreml_window_steps,
        )
        decoder = build_decoder(model_dir, settings)
        log.info(
            "loaded model %s from %s: width %d, backend %s, decoder %s, in %.2f s",
            model_dir.name,
            model_dir.path,
            model_dir.manifest.n_hidden,
            model.backend,
            decoder.description,
            time.monotonic() - started,
        )
        if str(model_dir.manifest.source.get("name", "")).startswith("random-"):
            log.warning(
                "!!! %s holds RANDOM weights (made by scripts/make_random_model.py): transcripts are noise. "
                "Convert a real DeepSpeech checkpoint with scripts/convert.py and set DS_MODEL_DIR.",
                model_dir.path,
            )
        endpoints = EndpointConfig(settings.endpoint_silence_ms, settings.max_utterance_seconds)
        engine = cls(model_dir, model, decoder, stream_model_for(model, settings), endpoints)
        engine.load_seconds = time.monotonic() - started
        return engine

    def transcribe(
        self,
        samples: np.ndarray,
        *,
        hot_words: Mapping[str, float] | HotWords | None = None,
        alternatives: int = 1,
    ) -> Transcription:
        """Whole file: features, the dynamic model in windows of ≤ max_steps with state carried, one decode.

        Context windows are built one model window at a time (19×26 floats per step would otherwise be ~355 MB
        per hour of audio); only the MFCC frames and the probabilities are held for the whole file.
        `hot_words` ({word: boost}) and `alternatives` (N-best) are checked before the model runs: invalid ones
        raise HotWordError / DecodeOptionError (ValueErrors; HTTP 422).
        """
        hot = self.decoder.check_options(hot_words=hot_words, alternatives=alternatives)
        started = time.monotonic()
        decoder = self.utterance_decoder(hot_words=hot, alternatives=alternatives)
        # Each window's probabilities go to the decoder as soon as they exist: with decoder processes, a feed is
        # a send, so the network runs the next window while a decoder process decodes this one.
        for probs in self.window_probabilities(samples):
            decoder.feed(probs)
        transcript = decoder.finish()
        elapsed = time.monotonic() - started
        return Transcription(transcript, len(samples) / 16000.0, elapsed, tuple(decoder.utterances))

    def probabilities(self, samples: np.ndarray) -> np.ndarray:
        """The acoustic model's (T, n_classes) output for a whole file (`window_probabilities`, joined)."""
        parts = [np.zeros((0, self.model.n_classes), np.float32), *self.window_probabilities(samples)]
        return np.concatenate(parts)

    def window_probabilities(self, samples: np.ndarray) -> Iterator[np.ndarray]:
        """A whole file through the dynamic model in windows of ≤ max_steps with the LSTM state carried, window
        by window; the last window padded as the backend may."""
        state = LstmState.zeros(self.model.n_cell_dim)
        blocks = context_window_blocks(mfcc(samples), self.model.max_steps)
        windows = next(blocks, None)
        while windows is not None:
            following = next(blocks, None)
            if following is None:  # the last: its state is not needed, so a backend may pad it
                yield self.model.run_last_window(windows, state)
            else:
                probs, state = self.model.run_window(windows, state)
                yield probs
            windows = following

    def utterance_decoder(
        self,
        *,
        hot_words: Mapping[str, float] | HotWords | None = None,
        alternatives: int = 1,
        endpoints: EndpointConfig | None = None,
        grammar: Grammar | None = None,
    ) -> UtteranceDecoder:
        """Decoding cut at endpoints (`endpoints`, else the service's), the same for files and streams."""
        config = endpoints or self.endpoints
        alphabet = self.decoder.alphabet
        endpointer = None
        if config.silence_ms or config.max_frames:
            endpointer = Endpointer(config, alphabet.blank_index, alphabet.space_index)
        return UtteranceDecoder(
            lambda: self.decoder.stream(hot_words=hot_words, alternatives=alternatives, grammar=grammar), endpointer
        )

    def open_stream(
        self,
        *,
        hot_words: Mapping[str, float] | HotWords | None = None,
        alternatives: int = 1,
        endpoints: EndpointConfig | None = None,
        grammar: Grammar | None = None,
        on_utterances: Callable[[list[Utterance]], None] | None = None,
    ) -> StreamSession:
        """A new stream with its own state, hot words or grammar, N-best and endpoint settings (invalid ones raise
        at once); `on_utterances` hears of its utterances as they are found."""
        decoder = self.utterance_decoder(
            hot_words=hot_words, alternatives=alternatives, endpoints=endpoints, grammar=grammar
        )
        return StreamSession(self.stream_model, decoder, on_utterances)

    def close(self) -> None:
        """Stop the stream batcher's thread and the decoder processes, if there are (the app's shutdown calls
        this; idempotent)."""
        if isinstance(self.stream_model, BatchingModel):
            self.stream_model.close()
        close_decoder = getattr(self.decoder, "close", None)
        if close_decoder is not None:
            close_decoder()

    def info(self) -> dict[str, object]:
        manifest = self.model_dir.manifest
        # Names, not paths: /info is served to every client with the key, and a path tells them about the host
        # (and, for the shipped model, about the build machine it was trained on).
        source = {key: value for key, value in manifest.source.items() if key != "path"}
        if "path" in manifest.source:
            source["file"] = Path(str(manifest.source["path"])).name
        return {
            "model": {
                "name": self.model_dir.name,
                "n_hidden": manifest.n_hidden,
                "n_classes": manifest.n_classes,
                "alphabet": manifest.alphabet,
                "source": source,
                "static_steps": manifest.n_steps,
                "dynamic_max_steps": manifest.dynamic_max_steps,
            },
            "runtime": self.stream_model.describe(),  # the model's, plus stream batching when on
            "decoder": self.decoder.describe(),
        }


def stream_model_for(model: AcousticModel, settings: Settings) -> AcousticModel:
    """The model streams use: `model` wrapped in a BatchingModel when DS_STREAM_BATCHING is on and the backend
    computes several chunks in one pass; else `model` itself.

    Core ML batches only with a static .mlpackage converted with a batch dimension (`scripts/convert.py
    --stream-batch 1,2,4,8,16`: enumerated batch sizes, macOS 15); the batch-1 package's run_chunks is a loop
    of batch-1 predictions, where a batcher would only add a thread hop. A backend whose run_chunks takes a
    bounded batch in one pass (`chunk_batch_sizes`, the Core ML adapter's) gets batches of at most its largest
    size: more could not share a prediction, and a batch needs not wait for more open streams than that.
    """
    if not settings.stream_batching or not model.batched_chunks:
        return model
    wait_s = settings.stream_batch_wait_ms / 1000.0
    sizes: tuple[int, ...] = getattr(model, "chunk_batch_sizes", ())
    if sizes:
        return BatchingModel(model, max_batch=max(sizes), max_wait_s=wait_s)
    return BatchingModel(model, max_wait_s=wait_s)
