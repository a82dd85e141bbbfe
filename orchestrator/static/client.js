// livehuman web client: follows the integration flow of the API contract, so it doubles as an
// example for third-party clients. No build step.
"use strict";
const $ = (id) => document.getElementById(id);
const state = { pc: null, sessionid: null, events: null, recording: false, mic: null, speaking: false, talking: false, path: null };

function log(text) {
  const li = document.createElement("li");
  li.textContent = `${new Date().toLocaleTimeString()}  ${text}`;
  $("log").prepend(li);
}

function setStatus(text, kind) {
  $("status").textContent = text;
  $("status").className = `status ${kind}`;
}

function setConnected(on) {
  $("connect").disabled = on;
  for (const id of ["disconnect", "echo", "chat", "interrupt", "record", "set-audiotype", "stream-play"]) $(id).disabled = !on;
  $("mic-mode").disabled = on;
  $("ptt").hidden = $("mic-mode").value !== "ptt";
  $("ptt").disabled = !(on && state.mic);
}

// The server's access token (--api-token), asked for once when the server answers 401 and kept
// for this tab only. Sent as a header; as ?token= where a header cannot be set (SSE, downloads).
const TOKEN_KEY = "livehuman-token";
const token = () => sessionStorage.getItem(TOKEN_KEY) || "";
function withToken(url) {
  return token() ? `${url}${url.includes("?") ? "&" : "?"}token=${encodeURIComponent(token())}` : url;
}

async function api(path, init = {}) {
  for (let asked = false; ; asked = true) {
    const headers = new Headers(init.headers || {});
    if (token()) headers.set("Authorization", `Bearer ${token()}`);
    const resp = await fetch(path, { ...init, headers });
    if (resp.status !== 401 || asked) return resp;
    const given = window.prompt("This server needs its access token:");
    if (!given) return resp;
    sessionStorage.setItem(TOKEN_KEY, given.trim());
  }
}

async function post(path, body) {
  const resp = await api(path, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
  const answer = await resp.json();
  if (!resp.ok || (answer.code !== undefined && answer.code !== 0)) {
    log(`${path}: ${answer.msg || resp.status}`);
    setStatus(answer.msg || `error ${resp.status}`, "error");
    throw new Error(answer.msg);
  }
  return answer;
}

function iceServers() {
  const urls = $("stun").value.split(",").map((u) => u.trim()).filter(Boolean);
  return urls.map((url) => (url.startsWith("turn") ? { urls: url, username: $("turn-user").value, credential: $("turn-pass").value } : { urls: url }));
}

// "force TURN relay" (or ?relay=1 in the page's URL): only relayed candidates, every packet
// through the TURN server (iceTransportPolicy "relay"), to tell a NAT problem from the rest.
if (new URLSearchParams(location.search).get("relay") === "1") $("relay").checked = true;
const ICE_CONNECT_HINT_MS = 10000; // then say what "waiting forever" is (docs/DEPLOY.md)

function rtcConfiguration() {
  const config = { iceServers: iceServers() };
  if ($("relay").checked) {
    config.iceTransportPolicy = "relay";
    if (!config.iceServers.some((s) => s.urls.startsWith("turn"))) log("force TURN relay: no turn: URL in the connection settings, so ICE cannot connect");
  }
  return config;
}

// Which kind of path the media took: host (direct), srflx (through NAT, by STUN), relay (TURN).
async function logCandidatePair(pc) {
  const stats = await pc.getStats();
  let pair = null;
  stats.forEach((s) => { if (s.type === "transport" && s.selectedCandidatePairId) pair = stats.get(s.selectedCandidatePairId); });
  if (!pair) stats.forEach((s) => { if (s.type === "candidate-pair" && s.nominated && s.state === "succeeded") pair = s; });
  const local = pair && stats.get(pair.localCandidateId), remote = pair && stats.get(pair.remoteCandidateId);
  if (local && remote) {
    state.path = { local: local.candidateType, remote: remote.candidateType, protocol: local.protocol };
    log(`media path: ${local.candidateType} ↔ ${remote.candidateType} (${local.protocol})`);
  }
}

function waitIceGathering(pc) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const check = () => { if (pc.iceGatheringState === "complete") { pc.removeEventListener("icegatheringstatechange", check); resolve(); } };
    pc.addEventListener("icegatheringstatechange", check);
    setTimeout(resolve, 3000); // do not hang on an unreachable STUN server
  });
}

async function connect() {
  $("connect").disabled = true;
  setStatus("connecting", "idle");
  const pc = new RTCPeerConnection(rtcConfiguration());
  state.pc = pc;
  state.path = null;
  pc.addTransceiver("video", { direction: "recvonly" });
  const micMode = $("mic-mode").value;
  if (micMode !== "off") {
    // The server's VAD finds each utterance; the browser cancels the avatar's echo. Push-to-talk
    // sends the microphone only while the button (or the space bar) is held: a disabled track
    // sends silence, so releasing it ends the utterance after the VAD's end-of-turn silence.
    try {
      state.mic = await navigator.mediaDevices.getUserMedia({
        audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true } });
      const track = state.mic.getAudioTracks()[0];
      track.enabled = micMode === "handsfree";
      pc.addTransceiver(track, { direction: "sendrecv", streams: [state.mic] });
    } catch (e) {
      log(`microphone unavailable: ${e.message}`);
      pc.addTransceiver("audio", { direction: "recvonly" });
    }
  } else {
    pc.addTransceiver("audio", { direction: "recvonly" });
  }
  pc.addEventListener("track", (ev) => { $("video").srcObject = ev.streams[0] || new MediaStream([ev.track]); });
  const hint = setTimeout(() => {
    if (state.pc === pc && pc.connectionState !== "connected") log(`still ${pc.connectionState} after ${ICE_CONNECT_HINT_MS / 1000} s: ICE has found no path to the server (a NAT or firewall between you: see docs/DEPLOY.md "Waiting forever"; try a TURN server)`);
  }, ICE_CONNECT_HINT_MS);
  pc.addEventListener("connectionstatechange", () => {
    log(`connection ${pc.connectionState}`);
    if (pc.connectionState !== "new" && pc.connectionState !== "connecting") clearTimeout(hint);
    if (pc.connectionState === "connected") logCandidatePair(pc).catch(() => {});
    if (["failed", "closed", "disconnected"].includes(pc.connectionState)) disconnect();
  });
  await pc.setLocalDescription(await pc.createOffer());
  await waitIceGathering(pc);
  const offer = { sdp: pc.localDescription.sdp, type: "offer" };
  if ($("avatar").value) offer.avatar = $("avatar").value;
  if ($("voice").value) offer.refaudio = $("voice").value;
  let answer;
  try {
    answer = await post("/offer", offer);
  } catch (e) {
    pc.close();
    $("connect").disabled = false;
    return;
  }
  state.sessionid = answer.sessionid;
  await pc.setRemoteDescription(answer);
  setConnected(true);
  setStatus(`connected · session ${answer.sessionid}`, "connected");
  listen(answer.sessionid);
}

function listen(sessionid) {
  const events = new EventSource(withToken(`/sse?sessionid=${sessionid}`));
  state.events = events;
  events.onmessage = (msg) => {
    const ev = JSON.parse(msg.data);
    if (ev.event === "start") { state.speaking = true; setStatus("speaking", "speaking"); }
    else if (ev.event === "listening") setStatus("listening", "connected");
    else if (ev.event === "end" || ev.event === "interrupted") { state.speaking = false; setStatus(`connected · session ${sessionid}`, "connected"); }
    else if (ev.event === "error") setStatus(ev.msg || "error", "error");
    else if (ev.event === "record_saved") showDownload(sessionid);
    if (ev.event === "transcript" && ev.final === false) setStatus(`heard: ${ev.text}…`, "connected");
    else if (ev.event === "question" || ev.event === "transcript") { if (ev.event === "question" || !ev.turn) log(`you: ${ev.text || "(nothing heard)"}`); }
    else if (ev.event === "sentence") { if (ev.kind === "chat") log(`avatar: ${ev.text}`); }
    else log(`${ev.event}${ev.text ? ": " + ev.text : ""}${ev.msg ? ": " + ev.msg : ""}`);
  };
  events.onerror = () => { if (!state.sessionid) events.close(); };
}

function showDownload(sessionid) {
  $("download").href = withToken(`/record/${sessionid}`);
  $("download").hidden = false;
}

function disconnect() {
  if (state.events) state.events.close();
  if (state.pc) state.pc.close();
  if (state.mic) { state.mic.getTracks().forEach((t) => t.stop()); state.mic = null; }
  state.pc = null; state.events = null; state.sessionid = null; state.recording = false;
  state.speaking = false; state.talking = false; $("ptt").classList.remove("held");
  $("record").textContent = "Start recording";
  setConnected(false);
  setStatus("disconnected", "idle");
}

async function speak(type) {
  const text = $("text").value.trim();
  if (!text || state.sessionid === null) return;
  await post("/human", { sessionid: state.sessionid, type, text, interrupt: $("interrupt-first").checked }).catch(() => {});
}

// Push-to-talk: the microphone is live only while held. Pressing also cuts the avatar off at
// once (the user asked for the floor), without waiting for the server's barge-in.
function talk(on) {
  const track = state.mic && state.mic.getAudioTracks()[0];
  if (!track || $("mic-mode").value !== "ptt" || on === state.talking) return;
  state.talking = on;
  track.enabled = on;
  $("ptt").classList.toggle("held", on);
  $("ptt").textContent = on ? "Talking… release to send" : "Hold to talk";
  if (on && state.speaking) post("/interrupt_talk", { sessionid: state.sessionid }).catch(() => {});
  // Released: the turn is over now; the server need not wait for the end-of-turn silence.
  if (!on) post("/end_turn", { sessionid: state.sessionid }).catch(() => {});
}
$("ptt").addEventListener("pointerdown", (ev) => { ev.preventDefault(); talk(true); });
for (const name of ["pointerup", "pointerleave", "pointercancel"]) $("ptt").addEventListener(name, () => talk(false));
const typing = (el) => el && (el.tagName === "TEXTAREA" || el.tagName === "INPUT" || el.tagName === "SELECT");
document.addEventListener("keydown", (ev) => { if (ev.code === "Space" && !typing(document.activeElement) && !$("ptt").disabled) { ev.preventDefault(); talk(true); } });
document.addEventListener("keyup", (ev) => { if (ev.code === "Space") talk(false); });
window.addEventListener("blur", () => talk(false));
$("mic-mode").addEventListener("change", () => { $("ptt").hidden = $("mic-mode").value !== "ptt"; });

$("connect").addEventListener("click", connect);
$("disconnect").addEventListener("click", disconnect);
$("talk").addEventListener("submit", (ev) => { ev.preventDefault(); speak("echo"); });
$("chat").addEventListener("click", () => speak("chat"));
// "Speak from a file as a stream": the clip decoded by the browser, mixed to 16 kHz mono and sent
// over the /audio_stream WebSocket in 20 ms pieces at real time, as a voice agent's TTS streams
// its speech (docs/INTEGRATIONS.md). Interrupt (the button) cuts it like any speech.
const STREAM_RATE_HZ = 16000, STREAM_PIECE_MS = 20;
async function streamFile() {
  const file = $("stream-file").files[0];
  if (!file || state.sessionid === null) return;
  const decoded = await new AudioContext().decodeAudioData(await file.arrayBuffer()).catch(() => null);
  if (!decoded) { log(`${file.name}: not audio this browser can decode`); return; }
  const offline = new OfflineAudioContext(1, Math.ceil(decoded.duration * STREAM_RATE_HZ), STREAM_RATE_HZ);
  const source = offline.createBufferSource();
  source.buffer = decoded; source.connect(offline.destination); source.start();
  const mono = (await offline.startRendering()).getChannelData(0);
  const pcm = Int16Array.from(mono, (x) => Math.max(-32768, Math.min(32767, Math.round(x * 32767))));
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const ws = new WebSocket(withToken(`${scheme}//${location.host}/audio_stream?sessionid=${state.sessionid}`));
  ws.binaryType = "arraybuffer";
  ws.onmessage = (e) => {
    const m = JSON.parse(e.data);
    log(m.type === "error" ? `audio_stream: ${m.msg}` : `audio_stream: ${m.type}${m.position_s !== undefined ? ` at ${m.position_s} s` : ""}`);
    if (m.type === "playback_finished") ws.close();
  };
  await new Promise((resolve) => { ws.onopen = resolve; });
  ws.send(JSON.stringify({ type: "start", sample_rate: STREAM_RATE_HZ, channels: 1, format: "pcm_s16le", id: file.name }));
  const step = STREAM_RATE_HZ * STREAM_PIECE_MS / 1000, started = performance.now();
  for (let k = 0; k * step < pcm.length && ws.readyState === WebSocket.OPEN; k++) {
    ws.send(pcm.slice(k * step, (k + 1) * step).buffer);
    await new Promise((r) => setTimeout(r, Math.max(0, started + (k + 1) * STREAM_PIECE_MS - performance.now())));
  }
  if (ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ type: "end" }));
}
$("stream-play").addEventListener("click", () => streamFile().catch((e) => log(`stream: ${e.message}`)));
$("interrupt").addEventListener("click", () => post("/interrupt_talk", { sessionid: state.sessionid }).catch(() => {}));
$("set-audiotype").addEventListener("click", () =>
  post("/set_audiotype", { sessionid: state.sessionid, audiotype: Number($("audiotype").value), reinit: true }).catch(() => {}));
$("record").addEventListener("click", async () => {
  const type = state.recording ? "end_record" : "start_record";
  try {
    await post("/record", { sessionid: state.sessionid, type });
    state.recording = !state.recording;
    $("record").textContent = state.recording ? "Stop recording" : "Start recording";
  } catch (e) { /* shown in the status line */ }
});

// Avatar builder: upload, then poll the job until the avatar is ready (then connect with its id).
$("new-avatar").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const form = new FormData();
  form.append("id", $("new-avatar-id").value.trim());
  form.append("file", $("new-avatar-file").files[0]);
  const bar = $("new-avatar-progress");
  $("new-avatar-build").disabled = true;
  try {
    const resp = await api("/avatars", { method: "POST", body: form });
    let answer = await resp.json();
    if (answer.code !== 0) throw new Error(answer.msg);
    const job = answer.data.job;
    log(`building avatar '${answer.data.avatar}'`);
    bar.hidden = false;
    for (;;) {
      answer = await (await api(`/avatars/${job}`)).json();
      if (answer.code !== 0) throw new Error(answer.msg);
      bar.value = answer.data.progress || 0;
      if (answer.data.state === "done") { log(`avatar '${answer.data.avatar}' ready: put it in Avatar id and connect`); $("avatar").value = answer.data.avatar; break; }
      if (answer.data.state === "failed") throw new Error(answer.data.error);
      await new Promise((r) => setTimeout(r, 500));
    }
  } catch (err) {
    log(`avatar build failed: ${err.message}`);
  } finally {
    bar.hidden = true;
    $("new-avatar-build").disabled = false;
  }
});
