"use strict";
// The appliance status page: fetches /status.json and fills the cards. Read-only, no external
// assets; every value from the daemon goes in through textContent (never innerHTML).

const PROVISIONING = {
  "enrolled": ["Enrolled", "ok"],
  "standalone": ["Standalone (no hub)", "info"],
  "starting": ["Starting", "info"],
  "enrolling": ["Enrolling", "info"],
  "waiting-for-bundle": ["Waiting for a provisioning bundle", "warn"],
  "bundle-refused": ["Bundle refused", "bad"],
  "hub-unreachable": ["Hub unreachable", "warn"],
  "enrollment-refused": ["Enrollment refused", "bad"],
  "certificate-expired": ["Certificate expired", "bad"],
};
const $ = (id) => document.getElementById(id);
let refreshS = 5;

function ago(ts) {
  if (!ts) { return "never"; }
  const s = Math.max(0, Math.round(Date.now() / 1000 - ts));
  if (s < 90) { return s + " s ago"; }
  if (s < 5400) { return Math.round(s / 60) + " min ago"; }
  if (s < 172800) { return Math.round(s / 3600) + " h ago"; }
  return Math.round(s / 86400) + " days ago";
}

function duration(s) {
  if (s === null || s === undefined) { return "–"; }
  if (s < 3600) { return Math.round(s / 60) + " min"; }
  if (s < 172800) { return (s / 3600).toFixed(1) + " h"; }
  return Math.round(s / 86400) + " days";
}

function pct(r) { return r === null || r === undefined ? "–" : Math.round(r * 100) + " %"; }

function bytes(n) {
  if (n === null || n === undefined) { return "–"; }
  const units = ["B", "kB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) { n /= 1000; i += 1; }
  return (i ? n.toFixed(1) : n) + " " + units[i];
}

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) { e.textContent = text; }
  if (cls) { e.className = cls; }
  return e;
}

function pill(node, text, cls) {
  node.textContent = text;
  node.className = "pill " + (cls || "");
}

function facts(dl, pairs) {
  dl.replaceChildren();
  for (const [k, v] of pairs) {
    if (v === undefined) { continue; }
    dl.append(el("dt", k), el("dd", v === null ? "–" : String(v)));
  }
}

function meter(label, ratio, detail) {
  const box = el("div", null, "meter");
  box.append(el("div", label, "label"), el("div", pct(ratio) + (detail ? " · " + detail : ""), "value"));
  const bar = el("div", null, "bar");
  const fill = el("span", null, ratio > 0.9 ? "bad" : ratio > 0.75 ? "warn" : "");
  fill.style.width = Math.round(Math.min(1, Math.max(0, ratio || 0)) * 100) + "%";
  bar.append(fill);
  box.append(bar);
  return box;
}

function renderProvisioning(p) {
  const [text, cls] = PROVISIONING[p.state] || [p.state, ""];
  pill($("prov-state"), text, cls);
  const reason = $("prov-reason");
  reason.hidden = !p.reason;
  reason.textContent = p.reason || "";
  reason.className = "reason " + cls;
  $("prov-since").textContent = p.since ? "since " + ago(p.since) : "";
}

function renderHub(hub, provisioning) {
  if (provisioning.state === "standalone") {
    pill($("hub-state"), "Not used (standalone)", "info");
    facts($("hub-facts"), []);
    return;
  }
  hub = hub || {};
  if (hub.connected) {
    pill($("hub-state"), "Connected", "ok");
  } else {
    pill($("hub-state"), hub.address ? "Disconnected" : "Not connected yet", hub.address ? "bad" : "warn");
  }
  facts($("hub-facts"), [
    ["Address", hub.address || undefined],
    [hub.connected ? "Connected" : "Down", hub.since ? ago(hub.since) : undefined],
    ["Last contact", ago(hub.last_contact)],
    ["Error", hub.error || undefined],
  ]);
}

function renderModel(m) {
  const facts_ = [];
  if (!m || !m.name) {
    $("model-name").textContent = "No active model";
    $("model-name").className = "big warn-text";
  } else {
    $("model-name").textContent = m.name + " " + m.version;
    $("model-name").className = "big";
    facts_.push(["Backend", m.backend || undefined]);
  }
  if (m) {
    facts_.push(["State", m.state || undefined], ["Desired", m.desired || undefined],
                ["Last error", m.last_error || undefined]);
  }
  facts($("model-facts"), facts_);
}

function renderHealth(h, alerts) {
  const list = $("alerts");
  list.replaceChildren();
  for (const a of alerts) {
    const li = el("li", a.title, a.severity);
    li.append(el("small", a.alert + (a.subject && a.subject !== "daemon" ? " · " + a.subject : "")));
    list.append(li);
  }
  if (!alerts.length) { list.append(el("li", "No alerts", "none")); }
  const meters = $("meters");
  meters.replaceChildren();
  if (!h) {
    meters.append(el("p", "No health reading yet (the first arrives within one interval).", "muted"));
    $("gpu-status").textContent = "";
    $("gpus").replaceChildren();
    return;
  }
  meters.append(meter("CPU (" + h.cores + " cores)", h.cpu_ratio, "load " + h.load_1m.toFixed(2)));
  meters.append(meter("Memory", h.memory_used_ratio, "of " + bytes(h.memory_total_bytes)));
  for (const d of h.disk) { meters.append(meter("Disk " + d.mountpoint, d.used_ratio, bytes(d.free_bytes) + " free")); }
  const extra = el("div", null, "meter");
  extra.append(el("div", "Uptime · temperature", "label"),
               el("div", duration(h.uptime_s) + " · " +
                  (h.max_temperature_celsius === null ? "no sensor" : Math.round(h.max_temperature_celsius) + " °C"), "value"));
  meters.append(extra);
  const g = h.gpu;
  const gpuText = {
    "ok": g.gpus.length + " GPU" + (g.gpus.length === 1 ? "" : "s") + (g.driver_version ? " · driver " + g.driver_version : ""),
    "absent": "No NVIDIA GPU in this appliance: inference runs on the CPU.",
    "unavailable": "No GPU driver (NVML) on this appliance: inference runs on the CPU.",
    "fault": "GPU fault: " + (g.message || "NVML failed"),
  }[g.status] || g.status;
  $("gpu-status").textContent = gpuText + (g.message && g.status !== "fault" && g.status !== "ok" ? " (" + g.message + ")" : "");
  const gpus = $("gpus");
  gpus.replaceChildren();
  for (const gpu of g.gpus) {
    const box = el("div", null, "gpu");
    box.append(el("strong", "#" + gpu.index + " " + gpu.name));
    const row = el("div", null, "meters");
    row.append(meter("Utilisation", gpu.utilization_ratio));
    if (gpu.memory_total_bytes) {
      row.append(meter("Memory", gpu.memory_used_bytes / gpu.memory_total_bytes, "of " + bytes(gpu.memory_total_bytes)));
    }
    const t = el("div", null, "meter");
    t.append(el("div", "Temperature · power", "label"),
             el("div", (gpu.temperature_celsius === null ? "–" : Math.round(gpu.temperature_celsius) + " °C") + " · " +
                (gpu.power_draw_watts === null ? "–" : Math.round(gpu.power_draw_watts) + " W"), "value"));
    row.append(t);
    box.append(row);
    if (gpu.throttle_reasons.length) { box.append(el("p", "Throttling: " + gpu.throttle_reasons.join(", "), "muted")); }
    gpus.append(box);
  }
}

function renderUplink(u) {
  if (!u) {
    pill($("uplink-state"), "Not running", "warn");
    facts($("uplink-facts"), []);
    return;
  }
  if (u.ready === false) {
    pill($("uplink-state"), "Waiting for a model", "warn");
  } else if (u.queue_depth !== undefined && u.queue_depth >= u.queue_limit) {
    pill($("uplink-state"), "Queue full", "bad");
  } else {
    pill($("uplink-state"), u.queue_depth ? "Processing" : "Ready", "ok");
  }
  const stored = u.by_status !== undefined;
  facts($("uplink-facts"), [
    ["Queue", u.queue_depth === undefined ? undefined : u.queue_depth + " / " + u.queue_limit],
    ["Images", stored ? u.total + " (" + u.by_status.done + " done, " + u.by_status.failed + " failed)" : undefined],
    ["Last hour", stored ? u.last_hour + " processed" : undefined],
    ["Last received", stored ? ago(u.last_received_at) : undefined],
    ["Last failure", stored && u.failed.length ? u.failed[0].reason : undefined],
  ]);
  const missions = $("missions");
  missions.replaceChildren();
  for (const m of u.missions || []) {
    missions.append(el("li", "Mission " + m.mission + ": " + m.images + " images, last " + ago(m.last_received_at)));
  }
}

function renderPairing(p) {
  const qr = $("qr");
  if (qr.getAttribute("src") !== p.qr) { qr.setAttribute("src", p.qr); }
  const wb = p.workbench;
  $("pair-workbench").hidden = !wb;
  if (wb && $("wb-qr").getAttribute("src") !== wb.qr) {
    $("wb-qr").setAttribute("src", wb.qr);
    $("wb-link").setAttribute("href", wb.url);
  }
  const token = $("pair-token");
  if (p.offer) {
    const left = Math.max(0, Math.round(p.offer.expires_at - Date.now() / 1000));
    $("pair-text").textContent = "Scan with the drone app to pair “" + p.offer.name + "”";
    token.hidden = false;
    token.textContent = p.offer.token;
    $("pair-help").textContent = "This token is shown for " + Math.ceil(left / 60) +
      " more min, or until the app sends its first image.";
  } else {
    $("pair-text").textContent = p.url;
    token.hidden = true;
    token.textContent = "";
    $("pair-help").textContent = (p.paired ? "Paired with “" + p.paired + "”. " : "") +
      "The code holds the uplink address only. To pair an app, run “spoke pair” on the " +
      "appliance: a new token then shows here for a few minutes.";
  }
}

function renderRecent(recent) {
  const list = $("recent");
  list.replaceChildren();
  $("no-detections").hidden = recent.length > 0;
  for (const f of recent) {
    const li = el("li");
    li.dataset.image = f.id;
    if (f.thumbnail) {
      const img = el("img");
      img.src = f.thumbnail;
      img.alt = "image " + f.id.slice(0, 12);
      img.loading = "lazy";
      li.append(img);
    } else {
      li.append(el("div", "image removed by retention", "noimg"));
    }
    const cap = el("div", null, "caption");
    for (const l of f.labels.slice(0, 3)) {
      const sev = { "exposed_bars": 3, "spallation": 3, "efflorescence": 1 }[l.label] || 2;
      cap.append(el("span", l.label.replace("_", " ") + " " + Math.round(l.prob * 100) + "%", "tag sev" + sev));
    }
    if (f.labels.length > 3) { cap.append(el("span", "+" + (f.labels.length - 3), "tag more")); }
    cap.append(el("div", (f.mission ? f.mission + " · " : "") + ago(f.finished_at), "muted"));
    li.append(cap);
    list.append(li);
  }
}

function render(s) {
  refreshS = s.refresh_s || refreshS;
  const who = s.device_id || (s.provisioning.state === "standalone" ? "standalone, no device id" : "not enrolled yet");
  $("device").textContent = who + " · spoke " + s.software_version;
  renderProvisioning(s.provisioning);
  renderHub(s.hub, s.provisioning);
  $("pair-plain").hidden = s.api.tls;
  renderModel(s.model);
  renderHealth(s.health, s.alerts);
  renderUplink(s.uplink);
  renderPairing(s.pairing);
  renderRecent(s.recent);
  const critical = s.alerts.some((a) => a.severity === "critical");
  const attention = s.provisioning.stuck || critical || !(s.model && s.model.name) || s.alerts.length;
  pill($("overall"), attention ? "Needs attention" : "All good", critical || s.provisioning.stuck ? "bad" : attention ? "warn" : "ok");
  $("updated").textContent = "updated " + new Date().toLocaleTimeString() + ", every " + refreshS + " s";
}

async function refresh() {
  const error = $("error");
  try {
    const response = await fetch("/status.json", { cache: "no-store" });
    if (!response.ok) { throw new Error("HTTP " + response.status); }
    render(await response.json());
    error.hidden = true;
  } catch (exc) {
    error.hidden = false;
    error.textContent = "Cannot reach the appliance (" + exc.message + "); retrying.";
  }
  setTimeout(refresh, refreshS * 1000);
}

refresh();
