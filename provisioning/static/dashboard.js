"use strict";
// Fetches /api/v1/devices and renders one row per device. No external assets.

function pct(ratio) {
  return ratio === null || ratio === undefined ? "–" : Math.round(ratio * 100) + " %";
}

function ago(ts) {
  if (!ts) { return "never"; }
  const s = Math.max(0, Math.round(Date.now() / 1000 - ts));
  if (s < 120) { return s + " s ago"; }
  if (s < 7200) { return Math.round(s / 60) + " min ago"; }
  return Math.round(s / 3600) + " h ago";
}

function cell(row, text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) { td.className = cls; }
  row.appendChild(td);
  return td;
}

function render(devices) {
  const body = document.querySelector("#devices tbody");
  body.replaceChildren();
  let online = 0;
  for (const d of devices) {
    if (d.availability === "online") { online += 1; }
    const row = document.createElement("tr");
    row.dataset.device = d.id;
    cell(row, d.id, "id");
    const status = cell(row, "");
    const badge = document.createElement("span");
    badge.className = "badge " + d.availability;
    badge.textContent = d.availability;
    status.appendChild(badge);
    cell(row, ago(d.last_seen));
    cell(row, Object.entries(d.labels).map(([k, v]) => k + "=" + v).join(", "));
    cell(row, d.software_version || "–");
    cell(row, d.cert_not_after ? new Date(d.cert_not_after * 1000).toISOString().slice(0, 10) : "–");
    const model = d.state && d.state.model ? d.state.model.name + " " + d.state.model.version : "–";
    cell(row, model);
    cell(row, pct(d.health.cpu_ratio));
    cell(row, pct(d.health.memory_used_ratio));
    cell(row, pct(d.health.disk_used_ratio));
    cell(row, d.health.gpu_count ? d.health.gpu_count + " × " + d.health.gpu_status
                                 : (d.health.gpu_status === null ? "–" : "none"));
    cell(row, d.alerts.map((a) => a.alert).join(", ") || "none", d.alerts.length ? "alert" : "");
    body.appendChild(row);
  }
  document.getElementById("summary").textContent =
    devices.length + (devices.length === 1 ? " device, " : " devices, ") + online +
    " online · updated " + new Date().toLocaleTimeString();
}

async function refresh() {
  const error = document.getElementById("error");
  try {
    const response = await fetch("/api/v1/devices");
    if (!response.ok) { throw new Error("HTTP " + response.status); }
    render(await response.json());
    error.hidden = true;
  } catch (e) {
    error.hidden = false;
    error.textContent = "Cannot reach the hub: " + e.message;
  }
}

refresh();
setInterval(refresh, 5000);
