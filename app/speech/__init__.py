"""The speech pipeline: audio bytes → 16 kHz samples → MFCC windows → acoustic model → CTC decoder → transcript.

Knows no web framework: the service layer (app/service) and the transports (app/routes) build on it.
"""
