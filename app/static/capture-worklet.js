// AudioWorklet processor: mixes the microphone to mono, converts to s16le and posts frames of a fixed size
// (about 0.1 s) to the page, which sends them over the websocket. Optionally downsamples to a target rate
// (used only when the audio context runs above the 48 kHz the server accepts).
class CaptureProcessor extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const opts = options.processorOptions || {};
    this.inRate = sampleRate; // global in AudioWorkletGlobalScope
    this.outRate = opts.outRate || sampleRate;
    this.frameSamples = Math.max(128, Math.round(this.outRate * (opts.frameSeconds || 0.1)));
    this.buffer = new Int16Array(this.frameSamples);
    this.filled = 0;
    this.ratio = this.inRate / this.outRate;
    this.position = 0; // fractional read position for downsampling
    this.acc = 0;
    this.accCount = 0;
    this.peak = 0;
    this.stopped = false;
    this.port.onmessage = (event) => {
      if (event.data === "flush") {
        this.flush();
        this.stopped = true;
        this.port.postMessage({ type: "flushed" });
      }
    };
  }

  push(value) {
    const clamped = value > 1 ? 1 : value < -1 ? -1 : value;
    this.buffer[this.filled++] = clamped < 0 ? clamped * 0x8000 : clamped * 0x7fff;
    if (this.filled === this.frameSamples) this.flush();
  }

  flush() {
    if (this.filled === 0) return;
    const frame = this.buffer.slice(0, this.filled);
    this.port.postMessage({ type: "frame", pcm: frame.buffer, peak: this.peak }, [frame.buffer]);
    this.filled = 0;
    this.peak = 0;
  }

  process(inputs) {
    if (this.stopped) return false;
    const input = inputs[0];
    if (!input || input.length === 0) return true;
    const channels = input.length;
    const length = input[0].length;
    for (let i = 0; i < length; i++) {
      let sum = 0;
      for (let c = 0; c < channels; c++) sum += input[c][i];
      const mono = sum / channels;
      const magnitude = Math.abs(mono);
      if (magnitude > this.peak) this.peak = magnitude;
      if (this.ratio === 1) {
        this.push(mono);
        continue;
      }
      // Box-filter downsampling: average the input samples that fall into each output sample.
      this.acc += mono;
      this.accCount++;
      this.position += 1;
      if (this.position >= this.ratio) {
        this.position -= this.ratio;
        this.push(this.acc / this.accCount);
        this.acc = 0;
        this.accCount = 0;
      }
    }
    return true;
  }
}

registerProcessor("capture-processor", CaptureProcessor);
