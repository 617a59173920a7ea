"""Offline conversion of DeepSpeech checkpoints / frozen graphs to Core ML (heavy deps: TensorFlow, coremltools).

Never imported by the serving path (`app`); installed with the `convert` extra.
"""
