"""Wyoming (Home Assistant's voice protocol) speech-to-text: one more adapter on the stream controller."""
