// Capture AudioWorklet: takes the microphone at the AudioContext's rate, resamples it to 24 kHz with a
// band-limited (windowed-sinc) filter and posts Float32 blocks to the page, each with the context time of
// its first input sample. Runs on the audio rendering thread, so it does nothing but filter and post.

const OUT_RATE = 24000;
const ZERO_CROSSINGS = 16; // kernel half-width in output-rate samples: enough for ~60 dB stop band
const TABLE_RES = 256; // kernel table points per input sample (linear interpolation between them)

/** Streaming windowed-sinc resampler: output sample m is the filtered input at position m * inRate / outRate. */
class SincResampler {
  constructor(inRate, outRate) {
    this.step = inRate / outRate;
    const scale = Math.min(1, outRate / inRate); // low-pass below the lower Nyquist: no aliasing when decimating
    this.cutoff = 0.5 * scale * 0.92; // cycles per input sample, a little under Nyquist for the transition band
    this.half = Math.ceil(ZERO_CROSSINGS / scale); // kernel half-width in input samples
    const n = this.half * TABLE_RES + 2;
    this.table = new Float32Array(n);
    for (let i = 0; i < n; i++) {
      const x = i / TABLE_RES; // distance from the centre, in input samples
      const arg = 2 * this.cutoff * x;
      const sinc = x === 0 ? 1 : Math.sin(Math.PI * arg) / (Math.PI * arg);
      const w = x >= this.half ? 0 : 0.42 + 0.5 * Math.cos((Math.PI * x) / this.half) + 0.08 * Math.cos((2 * Math.PI * x) / this.half); // Blackman
      this.table[i] = 2 * this.cutoff * sinc * w;
    }
    this.buf = new Float32Array(4096);
    this.len = 0; // valid samples in buf
    this.base = 0; // absolute input index of buf[0]
    this.nextOut = 0; // absolute output index of the next output sample
  }

  kernel(x) {
    const ax = Math.abs(x) * TABLE_RES;
    const i = Math.floor(ax);
    if (i >= this.table.length - 1) return 0;
    const f = ax - i;
    return this.table[i] * (1 - f) + this.table[i + 1] * f;
  }

  /** Appends input samples; returns the output samples that are now fully determined. */
  push(input) {
    if (this.len + input.length > this.buf.length) {
      const grown = new Float32Array(Math.max(this.buf.length * 2, this.len + input.length));
      grown.set(this.buf.subarray(0, this.len));
      this.buf = grown;
    }
    this.buf.set(input, this.len);
    this.len += input.length;
    const out = [];
    for (;;) {
      const p = this.nextOut * this.step;
      const centre = Math.floor(p);
      if (centre + this.half >= this.base + this.len) break; // needs input not captured yet
      let acc = 0;
      for (let k = centre - this.half + 1; k <= centre + this.half; k++) {
        const idx = k - this.base;
        if (idx >= 0) acc += this.buf[idx] * this.kernel(p - k);
      }
      out.push(acc);
      this.nextOut++;
    }
    // Drop input no future output needs.
    const keepFrom = Math.floor(this.nextOut * this.step) - this.half - this.base;
    if (keepFrom > 0) {
      this.buf.copyWithin(0, keepFrom, this.len);
      this.len -= keepFrom;
      this.base += keepFrom;
    }
    return Float32Array.from(out);
  }
}

class CaptureProcessor extends AudioWorkletProcessor {
  constructor() {
    super();
    this.resampler = new SincResampler(sampleRate, OUT_RATE);
    this.started = false;
  }

  process(inputs) {
    const channels = inputs[0];
    if (!channels || channels.length === 0) return true; // no microphone connected (yet)
    const mono = channels[0];
    if (channels.length > 1) {
      for (let c = 1; c < channels.length; c++) for (let i = 0; i < mono.length; i++) mono[i] += channels[c][i];
      for (let i = 0; i < mono.length; i++) mono[i] /= channels.length;
    }
    if (!this.started) {
      this.started = true;
      this.port.postMessage({ type: 'start', contextTime: currentTime, inputRate: sampleRate });
    }
    const out = this.resampler.push(mono);
    if (out.length > 0) this.port.postMessage({ type: 'audio', samples: out }, [out.buffer]);
    return true;
  }
}

registerProcessor('duplex-capture', CaptureProcessor);
