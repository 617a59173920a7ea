"""Build-time language-model tooling: ARPA estimation, KenLM `build_binary`, DeepSpeech `.scorer` packaging.

Nothing here is imported by the serving code (`app/`); it only produces files that `app.speech.decoding` reads.
"""
