"""The page `stdtrt live --sink web` serves: the source and the stylized stream side by side, the figures,
and the controls. Plain HTML and script, no build step; {config} is replaced by the server's settings."""

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>stdtrt live</title>
<style>
 body { font: 14px system-ui, sans-serif; margin: 16px; background: #111; color: #eee; }
 .panes { display: flex; gap: 12px; } .pane { flex: 1; } .pane video, .pane img { width: 100%; background: #000; }
 #figures { font-family: monospace; margin: 8px 0; } #message { color: #fb6; min-height: 1.2em; }
 label { margin-right: 12px; } input[type=text] { width: 28em; }
</style></head>
<body>
<h3>stdtrt live</h3>
<div class="panes">
 <div class="pane"><div>source</div><video id="local" autoplay muted playsinline hidden></video>
  <img id="input" hidden></div>
 <div class="pane"><div>stylized <span id="transport"></span></div>
  <video id="remote" autoplay muted playsinline hidden></video><img id="mjpeg" hidden></div>
</div>
<div id="figures">waiting for frames</div>
<div id="controls">
 <label>prompt <input type="text" id="prompt"></label><button id="apply">apply</button>
 <label>strength <input type="range" id="strength" min="0.05" max="1" step="0.05"> <span id="sv"></span></label>
 <label><input type="checkbox" id="cache"> attention cache</label>
 <div id="baked"></div>
</div>
<div id="message"></div>
<script>
const cfg = {config};
const q = cfg.token ? "?token=" + encodeURIComponent(cfg.token) : "";
const api = (path, body) => fetch(path + q, body === undefined ? {} :
  {method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)});
const say = (t) => { document.getElementById("message").textContent = t; };
window.stdtrt = {received: 0, transport: "", errors: []};

document.getElementById("prompt").value = cfg.prompt;
document.getElementById("strength").value = cfg.strength;
document.getElementById("sv").textContent = cfg.strength;
document.getElementById("cache").checked = cfg.cache;
if (cfg.baked) {
  for (const id of ["prompt", "strength", "apply", "cache"]) document.getElementById(id).disabled = true;
  document.getElementById("baked").textContent = cfg.baked;
}
async function change(body) {
  const r = await api("/control", body);
  const j = await r.json();
  say(r.ok ? "applied: " + JSON.stringify(j.applied) : j.error);
}
document.getElementById("apply").onclick = () => change({prompt: document.getElementById("prompt").value});
document.getElementById("strength").onchange = (e) => {
  document.getElementById("sv").textContent = e.target.value; change({strength: parseFloat(e.target.value)}); };
document.getElementById("cache").onchange = (e) => change({cache: e.target.checked});

function mjpeg(id, feed) {
  const img = document.getElementById(id);
  img.src = "/mjpeg" + q + (q ? "&" : "?") + "feed=" + feed; img.hidden = false;
}
async function webrtc() {
  const pc = new RTCPeerConnection();
  window.stdtrt.pc = pc;
  if (cfg.web_source) {
    const stream = await navigator.mediaDevices.getUserMedia({video: {width: cfg.width, height: cfg.height}});
    const local = document.getElementById("local"); local.srcObject = stream; local.hidden = false;
    for (const t of stream.getVideoTracks()) pc.addTrack(t, stream);
  } else { mjpeg("input", "input"); }
  if (cfg.web_sink) {
    if (!cfg.web_source) pc.addTransceiver("video", {direction: "recvonly"});
    pc.ontrack = (e) => {
      const v = document.getElementById("remote"); v.srcObject = new MediaStream([e.track]); v.hidden = false;
      const count = () => { window.stdtrt.received++; v.requestVideoFrameCallback(count); };
      v.requestVideoFrameCallback(count);
    };
  }
  await pc.setLocalDescription(await pc.createOffer());
  await new Promise((ok) => { if (pc.iceGatheringState === "complete") ok();
    else pc.onicegatheringstatechange = () => pc.iceGatheringState === "complete" && ok(); });
  const r = await api("/offer", {sdp: pc.localDescription.sdp, type: pc.localDescription.type});
  const j = await r.json();
  if (!r.ok) throw new Error(j.error);
  await pc.setRemoteDescription(j);
  window.stdtrt.transport = "webrtc";
  document.getElementById("transport").textContent = "(WebRTC)";
}
async function start() {
  try { await webrtc(); }
  catch (e) {
    window.stdtrt.errors.push(String(e)); say(String(e));
    if (String(e).includes("busy")) return;
    if (cfg.web_sink && !cfg.web_source) {
      window.stdtrt.transport = "mjpeg"; document.getElementById("transport").textContent = "(MJPEG)";
      mjpeg("mjpeg", "output");
    }
  }
}
async function figures() {
  try {
    const f = await (await api("/stats")).json();
    document.getElementById("figures").textContent = f.frames ?
      `${f.frames} frames, ${f.fps.toFixed(1)} fps, latency p50 ${f.p50_ms.toFixed(0)} ms ` +
      `p95 ${f.p95_ms.toFixed(0)} ms (capture to sink), ${f.dropped} dropped` + (f.note ? "; " + f.note : "")
      : "waiting for frames";
  } catch (e) {}
}
setInterval(figures, 500);
start();
</script></body></html>
"""
