"""scripts/bench.py's sections, one module each (the entry point, its CLI and `main` stay in scripts/bench.py).

common       constants, profiles, targets, logging and the measuring helpers every section uses
audio        the espeak-ng speech track and its clips, cached under .cache/bench/
models       model directories, the in-process engine, and the real uvicorn server (tests/support/server.py)
whole_file   section 1: /transcribe's stages in process and end to end over HTTP
streaming    section 2: our stream against the coremltools guide's loop (the seed)
native       section 3: the official DeepSpeech 0.9.3 native client
concurrency  section 4: many websocket streams, batching on and off
limits       section 5: this machine's sgemm and memory bandwidth, and each stage's fraction of them
jobs         --jobs (not a section): batch-job throughput with one and two worker processes, queue latency
run          the Bench: which sections run, their rows and results
report       the headline ratios, the table and the JSON report
"""
