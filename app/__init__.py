"""On-premise DeepSpeech transcription service: audio → features → acoustic model → CTC decoder → HTTP/websocket."""

import os

# One BLAS thread unless the operator says otherwise (set before NumPy loads OpenBLAS): the service runs its own
# concurrency (workers, batched streams), and OpenBLAS's thread pool made its small matrix products 7-25x slower
# on a busy 2-core machine (tests/test_soak.py's measurements, recorded on issue 8).
for _name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "VECLIB_MAXIMUM_THREADS"):
    os.environ.setdefault(_name, "1")
