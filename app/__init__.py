"""On-premise DeepSpeech transcription service: audio → features → acoustic model → CTC decoder → HTTP/websocket."""
