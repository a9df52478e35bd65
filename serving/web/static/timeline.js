// One time axis for the whole conversation: seconds since the first captured microphone sample, on the
// AudioContext clock. The user's microphone and the model's audio *as played* are kept as peak envelopes in
// 10 ms bins; events are marks on the same axis. The canvas shows the last WINDOW_S seconds.

export const BIN_S = 0.01;
const WINDOW_S = 12;

const COLOURS = {
  user: '#2f6fde',
  model: '#d9822b',
  grid: '#d8dde6',
  text: '#3a4150',
  turn: '#7a3fc2',
  vad: '#2f6fde',
  agent: '#1f9d55',
  error: '#c62828',
  cut: '#c62828',
};

export class Timeline {
  constructor(canvas) {
    this.canvas = canvas;
    this.user = []; // peak |x| per bin, index = floor(t / BIN_S)
    this.model = [];
    this.marks = []; // {t, kind, label}
    this.spans = []; // {from, to, label}: a turn's latency, end of speech → first model audio played
  }

  /** Adds PCM (Float32, -1..1) at sampleRate whose first sample sits at axis time t0. */
  addAudio(track, t0, samples, sampleRate) {
    const bins = this[track];
    for (let i = 0; i < samples.length; i++) {
      const b = Math.floor((t0 + i / sampleRate) / BIN_S);
      if (b < 0) continue;
      const v = Math.abs(samples[i]);
      if (!(bins[b] >= v)) bins[b] = v;
    }
  }

  /** Forgets model audio from axis time t on: what a barge-in cut from scheduled playback. */
  cutModel(t) {
    this.model.length = Math.min(this.model.length, Math.max(0, Math.ceil(t / BIN_S)));
  }

  /** The loudest model bin played before axis time `now` (0 when nothing audible has played). */
  modelPeakBefore(now) {
    let peak = 0;
    const last = Math.min(this.model.length, Math.floor(now / BIN_S));
    for (let b = 0; b < last; b++) if (this.model[b] > peak) peak = this.model[b];
    return peak;
  }

  mark(t, kind, label) {
    this.marks.push({ t, kind, label });
  }

  span(from, to, label) {
    this.spans.push({ from, to, label });
  }

  draw(now) {
    const c = this.canvas;
    const dpr = window.devicePixelRatio || 1;
    const w = c.clientWidth;
    const h = c.clientHeight;
    if (c.width !== Math.round(w * dpr) || c.height !== Math.round(h * dpr)) {
      c.width = Math.round(w * dpr);
      c.height = Math.round(h * dpr);
    }
    const g = c.getContext('2d');
    g.setTransform(dpr, 0, 0, dpr, 0, 0);
    g.clearRect(0, 0, w, h);
    const left = 56;
    const plotW = w - left - 8;
    const t1 = Math.max(now, WINDOW_S);
    const t0 = t1 - WINDOW_S;
    const x = (t) => left + ((t - t0) / WINDOW_S) * plotW;
    const top = 48; // four rows of mark labels above the lanes
    const laneH = (h - top - 22) / 2;
    const lanes = [
      { track: 'user', y: top, label: 'you (mic)' },
      { track: 'model', y: top + laneH, label: 'model (played)' },
    ];
    g.font = '11px system-ui, sans-serif';
    // Grid: one line a second, labelled on the axis below.
    g.strokeStyle = COLOURS.grid;
    g.fillStyle = COLOURS.text;
    g.lineWidth = 1;
    for (let s = Math.ceil(t0); s <= t1; s++) {
      g.beginPath();
      g.moveTo(x(s), top);
      g.lineTo(x(s), h - 20);
      g.stroke();
      g.fillText(`${s}s`, x(s) - 6, h - 6);
    }
    for (const lane of lanes) {
      const mid = lane.y + laneH / 2;
      g.fillStyle = COLOURS.text;
      g.fillText(lane.label, 2, mid + 4);
      g.fillStyle = COLOURS[lane.track];
      const bins = this[lane.track];
      const first = Math.max(0, Math.floor(t0 / BIN_S));
      const last = Math.min(bins.length, Math.floor(now / BIN_S)); // the model lane shows only what has played
      const bw = Math.max(1, (BIN_S / WINDOW_S) * plotW);
      for (let b = first; b < last; b++) {
        const v = bins[b] || 0;
        const a = Math.max(0.5, Math.min(1, v) * (laneH / 2 - 2));
        g.fillRect(x(b * BIN_S), mid - a, bw, 2 * a);
      }
    }
    for (const s of this.spans) {
      if (s.to < t0) continue;
      const y = top + laneH - 4;
      g.strokeStyle = COLOURS.turn;
      g.fillStyle = COLOURS.turn;
      g.lineWidth = 2;
      g.beginPath();
      g.moveTo(x(s.from), y);
      g.lineTo(x(s.to), y);
      g.stroke();
      g.fillText(s.label, x(s.from) + 2, y - 4);
    }
    g.lineWidth = 1;
    const rowEnds = [-Infinity, -Infinity, -Infinity, -Infinity]; // where each label row is taken up to, in px
    for (const m of [...this.marks].sort((a, b) => a.t - b.t)) {
      if (m.t < t0 || m.t > t1) continue;
      const px = x(m.t);
      const width = g.measureText(m.label).width + 6;
      let row = rowEnds.findIndex((end) => end < px);
      if (row < 0) row = rowEnds.indexOf(Math.min(...rowEnds)); // all taken: overwrite the oldest
      rowEnds[row] = px + width;
      g.strokeStyle = COLOURS[m.kind] || COLOURS.text;
      g.fillStyle = g.strokeStyle;
      g.setLineDash([3, 3]);
      g.beginPath();
      g.moveTo(px, 14 + 11 * row);
      g.lineTo(px, h - 20);
      g.stroke();
      g.setLineDash([]);
      g.fillText(m.label, px + 2, 11 + 11 * row);
    }
    // "Now" cursor.
    g.strokeStyle = COLOURS.text;
    g.beginPath();
    g.moveTo(x(now), 14);
    g.lineTo(x(now), h - 20);
    g.stroke();
  }
}
