"""Runs INSIDE the throwaway Python <= 3.9 venv that holds the official `deepspeech==0.9.3` wheel.

Not imported by the service or by the tests (it cannot be: it needs the 0.9.3 wheels, which exist only for
CPython 3.5-3.9). `tests/support/native_client.py` starts it as a subprocess, by path, and reads the one JSON
object it prints as the last line of stdout. Keep the syntax Python-3.6-compatible: no walrus, no `list[str]`
annotations, no `zip(strict=...)`; and import nothing from `tests` (the 3.9 interpreter has none of it).

    transcribe --model GRAPH --audio WAV [--scorer FILE] [--chunk N]
        deepspeech.Model(GRAPH): stt, sttWithMetadata (tokens with timesteps), and a stream fed in chunks of
        N samples (createStream / feedAudioContent / finishStream and finishStreamWithMetadata).
    decode --probs NPY --alphabet TXT [--beam N] [--cutoff-prob P] [--cutoff-top-n N]
        ds_ctcdecoder's CTC beam search WITHOUT a scorer over a (T, classes) probability matrix: the decoder
        the native client links, run on probabilities computed elsewhere.
"""

import argparse
import json
import sys
import time
import wave


def _tokens(transcript):
    return [
        {"text": t.text, "timestep": int(t.timestep), "start_time": float(t.start_time)}
        for t in transcript.tokens
    ]


def _text(transcript):
    return "".join(t.text for t in transcript.tokens)


def _read_wav(path, sample_rate):
    import numpy as np

    with wave.open(path, "rb") as wav:
        if wav.getnchannels() != 1 or wav.getsampwidth() != 2:
            raise SystemExit(
                f"{path}: need mono 16-bit PCM, got {wav.getnchannels()} channel(s) of {wav.getsampwidth()} byte(s)"
            )
        if wav.getframerate() != sample_rate:
            raise SystemExit(f"{path}: sample rate {wav.getframerate()}, the model wants {sample_rate}")
        return np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2").astype(np.int16)


def transcribe(args):
    import deepspeech

    started = time.monotonic()
    model = deepspeech.Model(args.model)
    load_s = time.monotonic() - started
    if args.scorer:
        model.enableExternalScorer(args.scorer)
        if args.lm_alpha is not None and args.lm_beta is not None:
            model.setScorerAlphaBeta(args.lm_alpha, args.lm_beta)
    sample_rate = model.sampleRate()
    audio = _read_wav(args.audio, sample_rate)

    started = time.monotonic()
    stt_text = model.stt(audio)
    stt_s = time.monotonic() - started
    metadata = model.sttWithMetadata(audio, 1)
    best = metadata.transcripts[0]

    started = time.monotonic()
    stream = model.createStream()
    for start in range(0, len(audio), args.chunk):
        stream.feedAudioContent(audio[start : start + args.chunk])
    stream_text = stream.finishStream()
    stream_s = time.monotonic() - started

    stream = model.createStream()
    for start in range(0, len(audio), args.chunk):
        stream.feedAudioContent(audio[start : start + args.chunk])
    stream_best = stream.finishStreamWithMetadata(1).transcripts[0]

    return {
        "deepspeech_version": deepspeech.version(),
        "sample_rate": sample_rate,
        "beam_width": model.beamWidth(),
        "samples": int(len(audio)),
        "scorer": args.scorer,
        "text": stt_text,
        "metadata_text": _text(best),
        "confidence": float(best.confidence),
        "tokens": _tokens(best),
        "stream_text": stream_text,
        "stream_tokens": _tokens(stream_best),
        "chunk": args.chunk,
        "seconds": {"load": load_s, "stt": stt_s, "stream": stream_s},
    }


def decode(args):
    import numpy as np
    from ds_ctcdecoder import Alphabet, swigwrapper

    probs = np.load(args.probs).astype(np.float64)  # the native client hands the decoder doubles
    if probs.ndim != 2:
        raise SystemExit(f"{args.probs}: need a (time, classes) matrix, got shape {probs.shape}")
    alphabet = Alphabet(args.alphabet)
    if probs.shape[1] != alphabet.GetSize() + 1:
        raise SystemExit(
            f"{args.probs} has {probs.shape[1]} classes, the alphabet {alphabet.GetSize()} labels + blank"
        )
    started = time.monotonic()
    # swigwrapper directly: the package's convenience wrapper drops the timesteps.
    results = swigwrapper.ctc_beam_search_decoder(
        np.ascontiguousarray(probs), alphabet, args.beam, args.cutoff_prob, args.cutoff_top_n, None, {}, 1
    )
    decode_s = time.monotonic() - started
    best = results[0]
    labels = [int(t) for t in best.tokens]
    steps = [int(t) for t in best.timesteps]
    return {
        "text": alphabet.Decode(best.tokens),
        "confidence": float(best.confidence),
        "tokens": [
            {"text": alphabet.DecodeSingle(label), "timestep": steps[i], "start_time": steps[i] * 0.02}
            for i, label in enumerate(labels)  # not zip(strict=...): this file runs on Python <= 3.9
        ],
        "beam_width": args.beam,
        "cutoff_prob": args.cutoff_prob,
        "cutoff_top_n": args.cutoff_top_n,
        "frames": int(probs.shape[0]),
        "seconds": {"decode": decode_s},
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command")
    one = commands.add_parser("transcribe")
    one.add_argument("--model", required=True)
    one.add_argument("--audio", required=True)
    one.add_argument("--scorer")
    one.add_argument("--lm-alpha", type=float)
    one.add_argument("--lm-beta", type=float)
    one.add_argument("--chunk", type=int, default=1000, help="samples per feedAudioContent call")
    two = commands.add_parser("decode")
    two.add_argument("--probs", required=True)
    two.add_argument("--alphabet", required=True)
    two.add_argument("--beam", type=int, default=500)
    two.add_argument("--cutoff-prob", type=float, default=1.0)
    two.add_argument("--cutoff-top-n", type=int, default=40)
    args = parser.parse_args(argv)
    if args.command == "transcribe":
        result = transcribe(args)
    elif args.command == "decode":
        result = decode(args)
    else:
        parser.error("give a command: transcribe or decode")
    sys.stdout.write("\n" + json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
