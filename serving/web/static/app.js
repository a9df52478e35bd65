// The duplex page: talk to the model from the browser over /v1/realtime (OpenAI Realtime protocol).
// Microphone → capture worklet (24 kHz) → input_audio_buffer.append; response.output_audio.delta → scheduled
// AudioBufferSources, cut at once on barge-in. Everything is placed on one axis: seconds since the first
// captured microphone sample, on the AudioContext clock (the page's capture clock). See docs/page.md.

import { Timeline, BIN_S } from './timeline.js';

const RATE = 24000; // wire rate both ways (audio/pcm, PCM16 mono little-endian)
const PLAYBACK_LEAD_S = 0.04; // jitter margin when playback starts (or restarts after running dry)…
const LEAD_STEP_S = 0.02; // …grown by this much each time a turn's audio ran dry mid-turn (late delivery)…
const LEAD_MAX_S = 0.2; // …up to one chunk: an adaptive jitter buffer
const AUDIBLE = 0.02; // |x| above which a model sample counts as sound (≈ -34 dBFS)
const VAD_FRAME = RATE / 100; // 10 ms frames for the page's own end-of-speech detector
const VAD_ON = 0.015; // frame RMS that counts as speech (≈ -36 dBFS), raised over a noisy floor below
const VAD_HANGOVER_S = 0.3; // silence that ends an utterance (pauses between words are shorter)

const DEFAULT_TOOLS = ['clock', 'calculator']; // the engine's default engine.tools (serving/spec.py)
const EXAMPLE_ARGS = { clock: '{}', calculator: '{"expression": "2 ** 10"}' };

const $ = (id) => document.getElementById(id);

/** Everything one conversation owns; Start begins with a fresh one (the previous stays on screen till then). */
const newState = () => ({
  ws: null,
  ctx: null,
  stream: null,
  worklet: null,
  connected: false,
  captureStart: null, // AudioContext time of the first captured sample: axis 0
  captured: 0, // 24 kHz samples captured so far (axis time = captured / RATE)
  sentOrigin: null, // axis time of the first sample sent: position 0 of the server's input stream
  pending: [], // captured Float32 blocks not yet sent
  pendingLen: 0,
  frameSamples: RATE / 10,
  playCursor: 0, // AudioContext time where the next model chunk starts
  sources: [], // {src, start, end, n, stoppedAt}
  playedDone: 0, // samples of sources that have finished
  playingTurn: null, // the turn whose audio was scheduled last
  lead: PLAYBACK_LEAD_S,
  underruns: 0, // times a turn's audio ran dry before its next delta arrived
  cuts: [], // {reason, at_s, dropped_s, played_s}: each time scheduled model audio was dropped unheard
  cancelled: new Set(), // response ids whose remaining audio is dropped (barge-in)
  turns: [], // {id, createdAt, firstAudio, eos, latency, status, row, transcript}
  turnById: new Map(),
  lastFirstAudio: -Infinity, // axis time of the previous turn's first audible sample
  calls: new Map(), // call_id → {name, args}
  results: [], // {call_id, output}: agent results announced as function_call_output items
  shownResults: new Set(), // call ids whose result is already in the log (announced by added and done)
  clientCalls: 0, // the page's own agent calls, named c1, c2, … (m1, m2, … are the model's)
  events: 0,
  errors: [],
  vad: { speaking: false, voicedRun: 0, lastVoicedEnd: null, floor: 0.002, frame: [], utterances: [] },
  unsettled: [], // turns whose latency waits for the capture to pass their first audio (+ the hangover)
});

let state = newState();
let timeline = new Timeline($('timeline'));

/** Read-only view for tests and curious users: a fresh frozen snapshot on every read. */
Object.defineProperty(window, 'duplexStats', {
  get() {
    return Object.freeze({
      connected: state.connected,
      samplesPlayed: samplesPlayed(),
      peakPlayed: state.ctx ? timeline.modelPeakBefore(axisNow()) : 0,
      turns: Object.freeze(
        state.turns.map((t) =>
          Object.freeze({ id: t.id, latency_s: t.latency, end_of_speech_s: t.eos, first_audio_s: t.firstAudio, status: t.status }),
        ),
      ),
      events: state.events,
      agentResults: Object.freeze(state.results.map((r) => Object.freeze({ ...r }))),
      underruns: state.underruns,
      cuts: Object.freeze(state.cuts.map((c) => Object.freeze({ ...c }))),
      errors: Object.freeze([...state.errors]),
      status: $('status').textContent,
    });
  },
});

function axisNow() {
  return state.ctx && state.captureStart !== null ? state.ctx.currentTime - state.captureStart : 0;
}

function setStatus(text, kind = '') {
  const el = $('status');
  el.textContent = text;
  el.className = kind;
}

function logEvent(text, kind = '') {
  const li = document.createElement('li');
  li.className = kind;
  li.textContent = `${axisNow().toFixed(2)} s  ${text}`;
  $('events').prepend(li);
}

function fail(message) {
  state.errors.push(message);
  setStatus(`error: ${message}`, 'error');
  logEvent(message, 'error');
  timeline.mark(axisNow(), 'error', 'error');
}

// ---- start / stop -------------------------------------------------------------------------------------------

async function start() {
  $('start').disabled = true;
  state = newState();
  timeline = new Timeline($('timeline'));
  $('turns').replaceChildren();
  $('events').replaceChildren();
  try {
    setStatus('asking the gateway for its settings…');
    const config = await (await fetch('/v1/realtime/config')).json();
    const chunkMs = Math.min(200, Math.max(20, Number(config.chunk_ms ?? config.audio?.chunk_ms) || 100));
    state.frameSamples = Math.round((RATE * chunkMs) / 1000);
    const tools = grantedTools(config);
    const token = await sessionToken(tools);
    showTools(tools);
    setStatus('starting the microphone…');
    await startAudio();
    setStatus('connecting…');
    connect(token, config);
    $('stop').disabled = false;
  } catch (e) {
    fail(String(e.message || e));
    $('start').disabled = false;
  }
}

/** A short-lived token: from the URL fragment (#token=…, minted by your own backend) or minted here. */
async function sessionToken(tools) {
  const fromUrl = new URLSearchParams(location.hash.slice(1)).get('token');
  if (fromUrl) return fromUrl;
  setStatus('minting a session token…');
  const r = await fetch('/v1/realtime/client_secrets', {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ session: { type: 'realtime', tools: tools.map((name) => ({ type: 'function', name })) } }),
  });
  const body = await r.json().catch(() => ({}));
  if (r.status === 401 || r.status === 403) {
    // A gateway with API keys mints only for a key holder, and the page holds no key: a backend mints instead.
    throw new Error(`this gateway mints tokens only for a key holder (${r.status}): open the page as …/#token=ek_…`);
  }
  if (!r.ok || typeof body.value !== 'string') {
    throw new Error(`minting a token failed (${r.status}): ${body.error?.message || JSON.stringify(body)}`);
  }
  return body.value;
}

/** The tools this session may run: #tools=a,b in the URL (empty = none), else the picker's list if its config
 * gives one, else the engine's defaults. A tool the engine lacks fails the session with an error naming it. */
function grantedTools(config) {
  const fromUrl = new URLSearchParams(location.hash.slice(1)).get('tools');
  if (fromUrl !== null) return fromUrl.split(',').map((t) => t.trim()).filter(Boolean);
  return Array.isArray(config.tools) ? config.tools : DEFAULT_TOOLS;
}

function showTools(tools) {
  const select = $('agent-tool');
  select.replaceChildren(...tools.map((t) => new Option(t, t)));
  $('agent-args').value = EXAMPLE_ARGS[tools[0]] ?? '{}';
}

/** The page's own agent job: a function_call item, run by the background agent beside the conversation. */
function askAgent(e) {
  e.preventDefault();
  const name = $('agent-tool').value;
  if (!name || !state.connected) return;
  const callId = `c${++state.clientCalls}`;
  const args = $('agent-args').value.trim() || '{}';
  const call = callFor(callId);
  call.name = name;
  call.args = args;
  send({ type: 'conversation.item.create', item: { type: 'function_call', call_id: callId, name, arguments: args } });
  logEvent(`agent call ${callId}: ${name}(${args})`, 'agent');
  timeline.mark(axisNow(), 'agent', `call ${name}`);
}

async function startAudio() {
  state.ctx = new AudioContext({ latencyHint: 'interactive' });
  await state.ctx.resume();
  await state.ctx.audioWorklet.addModule('/static/capture-worklet.js');
  state.stream = await navigator.mediaDevices.getUserMedia({
    audio: { channelCount: 1, echoCancellation: true, noiseSuppression: false, autoGainControl: false },
  });
  const mic = state.ctx.createMediaStreamSource(state.stream);
  state.worklet = new AudioWorkletNode(state.ctx, 'duplex-capture', { numberOfOutputs: 1 });
  state.worklet.port.onmessage = (m) => onCapture(m.data);
  mic.connect(state.worklet);
  state.worklet.connect(state.ctx.destination); // it writes silence; the connection keeps it processing
  requestAnimationFrame(render);
}

function connect(token, config) {
  const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
  const query = new URLSearchParams({ duplex_events: '1' }); // agent job progress, beside the GA events
  if (typeof config.model === 'string') query.set('model', config.model);
  // Browsers cannot set headers on a WebSocket: the token travels as a subprotocol, as OpenAI's SDKs do.
  const ws = new WebSocket(`${scheme}://${location.host}/v1/realtime?${query}`, [
    'realtime',
    `openai-insecure-api-key.${token}`,
  ]);
  state.ws = ws;
  const current = () => state.ws === ws; // a socket of a previous Start must not touch this conversation
  ws.onmessage = (m) => current() && onServerEvent(JSON.parse(m.data));
  ws.onerror = () => current() && fail('the WebSocket failed');
  ws.onclose = (e) => {
    if (!current()) return;
    state.connected = false;
    if (!state.errors.length || e.code !== 1000) {
      setStatus(`closed (code ${e.code}${e.reason ? `: ${e.reason}` : ''})`, e.code === 1000 ? '' : 'error');
    }
    $('start').disabled = false;
    teardown();
  };
}

function stop() {
  state.ws?.close(1000, 'page stopped');
  teardown();
}

/** Microphone off, playback cut, the audio clock stopped (so the picture stays as it was at the end). */
function teardown() {
  state.stream?.getTracks().forEach((t) => t.stop());
  state.worklet?.disconnect();
  truncatePlayback('stopped');
  $('agent-run').disabled = true;
  if (state.ctx && state.ctx.state !== 'closed') state.ctx.close();
  $('stop').disabled = true;
}

// ---- capture: the page's clock, its end-of-speech detector, and sending ---------------------------------------

function onCapture(msg) {
  if (msg.type === 'start') {
    state.captureStart = msg.contextTime;
    return;
  }
  const samples = msg.samples;
  const t0 = state.captured / RATE;
  timeline.addAudio('user', t0, samples, RATE);
  detectSpeech(samples, t0);
  state.captured += samples.length;
  if (!state.connected) return; // before session.created nothing is sent; the axis still runs
  if (state.sentOrigin === null) state.sentOrigin = t0;
  state.pending.push(samples);
  state.pendingLen += samples.length;
  while (state.pendingLen >= state.frameSamples) sendFrame(state.frameSamples);
}

function sendFrame(n) {
  const pcm = new Int16Array(n);
  let filled = 0;
  while (filled < n) {
    const block = state.pending[0];
    const take = Math.min(block.length, n - filled);
    for (let i = 0; i < take; i++) pcm[filled + i] = Math.max(-32768, Math.min(32767, Math.round(block[i] * 32767)));
    filled += take;
    if (take === block.length) state.pending.shift();
    else state.pending[0] = block.subarray(take);
  }
  state.pendingLen -= n;
  send({ type: 'input_audio_buffer.append', audio: toBase64(new Uint8Array(pcm.buffer)) });
}

/** Energy detector on the captured 24 kHz signal, 10 ms frames: the user's end of speech on the capture clock
 * is the end of the last speech frame before VAD_HANGOVER_S of quiet. Only for measuring: the model decides
 * the floor by itself. */
function detectSpeech(samples, t0) {
  const v = state.vad;
  for (let i = 0; i < samples.length; i++) {
    v.frame.push(samples[i]);
    if (v.frame.length < VAD_FRAME) continue;
    let sum = 0;
    for (const x of v.frame) sum += x * x;
    const rms = Math.sqrt(sum / VAD_FRAME);
    v.frame.length = 0;
    const frameEnd = t0 + (i + 1) / RATE;
    if (rms < v.floor * 2) v.floor = 0.95 * v.floor + 0.05 * Math.max(rms, 1e-5); // follow quiet rooms only
    const voiced = rms > Math.max(VAD_ON, 4 * v.floor);
    v.voicedRun = voiced ? v.voicedRun + 1 : 0;
    if (voiced) v.lastVoicedEnd = frameEnd;
    if (!v.speaking && v.voicedRun >= 3) {
      v.speaking = true;
      v.utterances.push({ start: frameEnd - 3 * BIN_S, end: null });
      timeline.mark(frameEnd - 3 * BIN_S, 'vad', 'you speak');
    } else if (v.speaking && frameEnd - v.lastVoicedEnd > VAD_HANGOVER_S) {
      v.speaking = false;
      v.utterances[v.utterances.length - 1].end = v.lastVoicedEnd;
      timeline.mark(v.lastVoicedEnd, 'vad', 'end of speech');
    }
    settleLatencies(frameEnd);
  }
}

// ---- server events ------------------------------------------------------------------------------------------

function send(event) {
  if (state.ws && state.ws.readyState === WebSocket.OPEN) state.ws.send(JSON.stringify(event));
}

function onServerEvent(ev) {
  state.events++;
  $('event-count').textContent = String(state.events);
  const now = axisNow();
  switch (ev.type) {
    case 'session.created':
      state.connected = true;
      setStatus(`connected · session ${ev.session?.id ?? ''}`, 'ok');
      $('agent-run').disabled = $('agent-tool').options.length === 0;
      logEvent('session.created');
      break;
    case 'session.updated':
      break;
    case 'input_audio_buffer.speech_started': {
      const t = inputPosition(ev.audio_start_ms, now);
      timeline.mark(t, 'turn', 'speech_started');
      logEvent('speech_started (model gives you the floor)');
      // The server opens the user's turn also when the model ends its own (response.done completed first):
      // only a turn still in progress is cut, and its remaining deltas are dropped too.
      const playing = state.playingTurn;
      if (isPlaying() && playing && playing.status === 'in_progress') {
        state.cancelled.add(playing.id);
        truncatePlayback('barge-in');
      }
      break;
    }
    case 'input_audio_buffer.speech_stopped':
      timeline.mark(inputPosition(ev.audio_end_ms, now), 'turn', 'speech_stopped');
      logEvent('speech_stopped (model takes the floor)');
      break;
    case 'response.created':
      turnFor(ev.response?.id, now);
      timeline.mark(now, 'turn', 'response');
      break;
    case 'response.output_audio.delta':
      onAudio(ev);
      break;
    case 'response.output_audio_transcript.delta': {
      const turn = turnFor(ev.response_id, now);
      turn.transcript += ev.delta || '';
      turn.row.querySelector('.transcript').textContent = turn.transcript;
      break;
    }
    case 'response.done':
      onResponseDone(ev.response || {}, now);
      break;
    case 'response.function_call_arguments.delta': {
      const call = callFor(ev.call_id || ev.item_id);
      call.args += ev.delta || '';
      break;
    }
    case 'response.function_call_arguments.done': {
      const call = callFor(ev.call_id || ev.item_id);
      call.name = ev.name || call.name;
      call.args = ev.arguments ?? call.args;
      logEvent(`agent call ${ev.call_id}: ${call.name}(${call.args})`, 'agent');
      timeline.mark(now, 'agent', `call ${call.name || ev.call_id}`);
      break;
    }
    case 'response.output_item.added':
    case 'response.output_item.done':
    case 'conversation.item.added':
    case 'conversation.item.created':
    case 'conversation.item.done':
      onItem(ev.item || {}, now);
      break;
    case 'duplex.agent': // the job's progress (?duplex_events=1); the result comes as a function_call_output
      if (ev.state === 'QUEUED' || ev.state === 'RUNNING') logEvent(`agent ${ev.call_id} ${ev.tool}: ${ev.state}`, 'agent');
      break;
    case 'error':
      fail(`${ev.error?.type ?? 'error'}: ${ev.error?.message ?? JSON.stringify(ev)}`);
      break;
    default:
      break;
  }
}

/** Axis time of a position on the server's input stream (ms since the first sample sent), else `fallback`. */
function inputPosition(ms, fallback) {
  return typeof ms === 'number' && state.sentOrigin !== null ? state.sentOrigin + ms / 1000 : fallback;
}

function callFor(id) {
  if (!state.calls.has(id)) state.calls.set(id, { name: '', args: '', shown: false });
  return state.calls.get(id);
}

function onItem(item, now) {
  if (item.type === 'function_call' && item.call_id) {
    const call = callFor(item.call_id);
    call.name = item.name || call.name;
  } else if (item.type === 'function_call_output' && item.call_id) {
    if (state.shownResults.has(item.call_id)) return; // the same result announced by added and by done
    state.shownResults.add(item.call_id);
    state.results.push({ call_id: item.call_id, output: String(item.output) });
    logEvent(`agent result ${item.call_id}: ${item.output}`, 'agent');
    timeline.mark(now, 'agent', `result ${item.call_id}`);
  }
}

function turnFor(id, now) {
  const key = id || `turn-${state.turns.length + 1}`;
  let turn = state.turnById.get(key);
  if (turn) return turn;
  const row = document.createElement('tr');
  row.innerHTML =
    '<td class="n"></td><td class="eos">–</td><td class="first">–</td><td class="latency">–</td>' +
    '<td class="state">speaking</td><td class="transcript"></td>';
  row.querySelector('.n').textContent = String(state.turns.length + 1);
  $('turns').prepend(row);
  turn = { id: key, createdAt: now, firstAudio: null, eos: null, latency: null, status: 'in_progress', row, transcript: '' };
  state.turns.push(turn);
  state.turnById.set(key, turn);
  return turn;
}

function onResponseDone(response, now) {
  const turn = turnFor(response.id, now);
  turn.status = response.status || 'completed';
  turn.row.querySelector('.state').textContent = turn.status;
  if (turn.status === 'cancelled' || turn.status === 'incomplete') {
    state.cancelled.add(turn.id);
    if (isPlaying()) truncatePlayback(`response ${turn.status}`);
  }
  timeline.mark(now, 'turn', `done (${turn.status})`);
}

// ---- playback -----------------------------------------------------------------------------------------------

function onAudio(ev) {
  const now = axisNow();
  const turn = turnFor(ev.response_id, now);
  if (state.cancelled.has(turn.id) || !state.ctx) return; // cut by a barge-in: never play the rest
  const bytes = fromBase64(ev.delta || '');
  const pcm = new Int16Array(bytes.buffer, 0, bytes.length >> 1);
  if (pcm.length === 0) return;
  const samples = new Float32Array(pcm.length);
  for (let i = 0; i < pcm.length; i++) samples[i] = pcm[i] / 32768;
  const when = schedule(samples, state.playingTurn === turn);
  state.playingTurn = turn;
  const axisWhen = when - state.captureStart;
  if (turn.firstAudio === null) {
    const i = samples.findIndex((x) => Math.abs(x) > AUDIBLE);
    if (i >= 0) firstAudio(turn, axisWhen + i / RATE);
  }
}

/** Plays the samples right after what is already scheduled (gapless); returns their AudioContext start time.
 * When playback ran dry in the middle of a turn, the delivery was late: the lead grows so it happens less. */
function schedule(samples, sameTurn) {
  const ctx = state.ctx;
  if (state.playCursor < ctx.currentTime + 0.005) {
    if (sameTurn && state.playCursor > 0) {
      state.underruns++;
      state.lead = Math.min(LEAD_MAX_S, state.lead + LEAD_STEP_S);
    }
    state.playCursor = ctx.currentTime + state.lead;
  }
  const buffer = ctx.createBuffer(1, samples.length, RATE);
  buffer.copyToChannel(samples, 0);
  const src = ctx.createBufferSource();
  src.buffer = buffer;
  src.connect(ctx.destination);
  const when = state.playCursor;
  src.start(when);
  const entry = { src, start: when, end: when + samples.length / RATE, n: samples.length, stoppedAt: null };
  src.onended = () => {
    const i = state.sources.indexOf(entry);
    if (i >= 0) {
      state.sources.splice(i, 1);
      state.playedDone += playedOf(entry, Infinity);
    }
  };
  state.sources.push(entry);
  timeline.addAudio('model', when - state.captureStart, samples, RATE);
  state.playCursor = entry.end;
  return when;
}

/** A turn's first audible sample as played, at axis time t; its latency is settled once the capture has
 * passed t by the detector's hangover (so whether the user was talking at t is known, however far the page's
 * main thread lags behind the audio clock). */
function firstAudio(turn, t) {
  turn.firstAudio = t;
  turn.previousFirstAudio = state.lastFirstAudio;
  state.lastFirstAudio = t;
  state.unsettled.push(turn);
  turn.row.querySelector('.first').textContent = `${t.toFixed(2)} s`;
  timeline.mark(t, 'model', 'first audio');
}

/** Latency = first model audio played − the user's end of speech, both on the capture clock. None when the
 * user was talking at that moment (overlap) or has not spoken since the previous turn's first audio. */
function settleLatencies(captured) {
  while (state.unsettled.length && state.unsettled[0].firstAudio + VAD_HANGOVER_S <= captured) {
    const turn = state.unsettled.shift();
    const t = turn.firstAudio;
    const said = state.vad.utterances.filter((u) => u.start <= t);
    const last = said[said.length - 1];
    if (last && (last.end === null || last.end > t)) {
      turn.row.querySelector('.latency').textContent = 'overlap';
      continue;
    }
    turn.eos = last ? last.end : null;
    turn.row.querySelector('.eos').textContent = turn.eos === null ? '–' : `${turn.eos.toFixed(2)} s`;
    if (turn.eos === null || turn.eos <= turn.previousFirstAudio) {
      turn.row.querySelector('.latency').textContent = 'no new speech';
      continue;
    }
    turn.latency = t - turn.eos;
    timeline.span(turn.eos, t, `${turn.latency.toFixed(2)} s`);
    renderLatency(turn);
  }
}

function renderLatency(turn) {
  const cell = turn.row.querySelector('.latency');
  cell.textContent = `${turn.latency.toFixed(3)} s`;
  cell.dataset.latency = String(turn.latency);
}

function isPlaying() {
  return state.ctx !== null && state.playCursor > state.ctx.currentTime;
}

/** Barge-in: everything scheduled and not yet heard is dropped now; playback restarts with the next turn. */
function truncatePlayback(reason) {
  if (!state.ctx) return;
  const now = state.ctx.currentTime;
  let dropped = 0;
  for (const s of state.sources) {
    if (s.end <= now) continue;
    s.stoppedAt = Math.max(s.start, now);
    dropped += s.n - playedOf(s, now);
    s.src.stop();
  }
  if (dropped === 0) return;
  state.playCursor = now;
  state.cuts.push({ reason, at_s: now - state.captureStart, dropped_s: dropped / RATE, played_s: samplesPlayed() / RATE });
  timeline.cutModel(now - state.captureStart);
  timeline.mark(now - state.captureStart, 'cut', `cut (${reason})`);
  logEvent(`playback cut (${reason}): ${(dropped / RATE).toFixed(2)} s of model audio dropped`, 'cut');
}

function playedOf(s, now) {
  const until = Math.min(now, s.stoppedAt ?? s.end);
  return Math.max(0, Math.min(s.n, Math.round((until - s.start) * RATE)));
}

function samplesPlayed() {
  if (!state.ctx) return 0;
  const now = state.ctx.currentTime;
  return state.playedDone + state.sources.reduce((sum, s) => sum + playedOf(s, now), 0);
}

// ---- helpers and drawing ------------------------------------------------------------------------------------

function toBase64(bytes) {
  let s = '';
  for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  return btoa(s);
}

function fromBase64(text) {
  const s = atob(text);
  const bytes = new Uint8Array(s.length + (s.length & 1));
  for (let i = 0; i < s.length; i++) bytes[i] = s.charCodeAt(i);
  return bytes;
}

function render() {
  timeline.draw(axisNow());
  $('played').textContent = (samplesPlayed() / RATE).toFixed(1);
  if (state.ctx && state.ctx.state !== 'closed') requestAnimationFrame(render);
}

$('start').addEventListener('click', start);
$('stop').addEventListener('click', stop);
$('agent').addEventListener('submit', askAgent);
$('agent-tool').addEventListener('change', () => ($('agent-args').value = EXAMPLE_ARGS[$('agent-tool').value] ?? '{}'));
timeline.draw(0);
