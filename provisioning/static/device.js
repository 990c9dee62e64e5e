"use strict";
// One device: identity, labels, hardware, software and model history, health charts drawn
// from the hub's stored history (GET /api/v1/devices/{id}/health), alerts and events.

(() => {
  const { el, api, ago, when, badge, labelText, table, row, showError, ready } = Spoke;
  const id = decodeURIComponent(window.location.pathname.split("/").pop());

  function dl(target, pairs) {
    const holder = document.getElementById(target);
    holder.replaceChildren();
    for (const [key, value] of pairs) {
      if (value === null || value === undefined || value === "") { continue; }
      holder.append(el("dt", { text: key }), el("dd", {}, value instanceof Node ? value : String(value)));
    }
  }

  function gib(bytes) { return bytes ? (bytes / 2 ** 30).toFixed(1) + " GiB" : null; }

  function certificate(d) {
    if (!d.cert_not_after) { return null; }
    const days = Math.floor((d.cert_not_after - Date.now() / 1000) / 86400);
    return el("span", { class: days < 30 ? "alert" : "", text: when(d.cert_not_after) + " (" +
      (days >= 0 ? "in " + days + " days" : "expired") + ")" });
  }

  const KINDS = {
    model_activated: "activated", model_committed: "committed", model_rolled_back: "rolled back",
    model_refused: "refused", model_interrupted: "interrupted", software_updated: "updated",
  };

  function versionsText(v) {
    return v ? "Spoke " + v.spoke + " · " + (v.os || "unknown OS") + " · kernel " + v.kernel : "";
  }

  function historyRow(e) {
    const x = e.data;
    if (e.kind === "software_updated") {
      return row([when(e.ts), badge(KINDS[e.kind], e.kind), versionsText(x.to), "",
        x.from ? "from " + versionsText(x.from) : "first start"]);
    }
    const detail = x.reason || x.gate || (x.previous ? "replaced " + String(x.previous).slice(0, 12) : "");
    return row([when(e.ts), badge(KINDS[e.kind] || e.kind, e.kind), (x.name || "") + "@" + (x.version || "?"),
      x.code || "", detail]);
  }

  function eventRow(e) {
    const x = e.data;
    let text = "";
    if (e.kind === "detection") {
      text = (x.mission ? "mission " + x.mission + ": " : "") + ((x.labels || []).join(", ") || "nothing");
    } else if (e.kind === "alert") {
      text = x.alert + " " + x.state + ": " + (x.message || "");
    } else if (e.kind === "software_updated") {
      text = versionsText(x.to);
    } else {
      text = Object.entries(x).filter(([, v]) => typeof v !== "object").map(([k, v]) => k + "=" + v)
        .join(", ").slice(0, 160);
    }
    return row([when(e.ts), e.kind, text]);
  }

  function charts(points) {
    const series = (key, scale) => points.map((p) => ({
      at: p.at, value: p[key] === null ? null : p[key] * scale }));
    const holder = document.getElementById("charts");
    holder.replaceChildren(
      SpokeChart.line("CPU", series("cpu_ratio", 100), { unit: "%", max: 100, cls: "cpu" }),
      SpokeChart.line("Memory", series("memory_used_ratio", 100), { unit: "%", max: 100, cls: "mem" }),
      SpokeChart.line("Disk", series("disk_used_ratio", 100), { unit: "%", max: 100, cls: "disk" }),
      SpokeChart.line("GPU temperature", series("gpu_max_temperature_celsius", 1), { unit: "°C", cls: "gpu" }),
      SpokeChart.line("GPU memory", series("gpu_memory_used_ratio", 100), { unit: "%", max: 100, cls: "gpumem" }),
    );
  }

  async function load() {
    try {
      const [d, health] = await Promise.all([
        api("/api/v1/devices/" + encodeURIComponent(id)),
        api("/api/v1/devices/" + encodeURIComponent(id) + "/health?limit=360"),
      ]);
      document.title = d.id + " · Spoke hub";
      document.getElementById("title").replaceChildren("Device ", el("span", { class: "id", text: d.id }),
        " ", badge(d.connectivity));
      dl("identity", [["Site", d.site], ["Labels", labelText(d.labels)], ["Status", d.availability],
        ["Last seen", ago(d.last_seen)], ["Enrolled", when(d.enrolled_at)], ["Claim", d.claim_id],
        ["Certificate expires", certificate(d)],
        ["Key storage", d.state && d.state.certificate ? d.state.certificate.key : null]]);
      const f = d.facts || {};
      dl("hardware", [["Product", f.product], ["Host name", f.hostname], ["CPU", f.cpu_model],
        ["Cores", f.cpu_count], ["Memory", gib(f.memory_bytes)], ["Architecture", f.arch],
        ["Kernel", f.kernel],
        ["GPUs", (f.gpus || []).map((g) => g.name + (g.memory_bytes ? " " + gib(g.memory_bytes) : "")).join(", ") || "none"]]);
      const refused = d.model_refused ? d.model_refused.version + ": " + d.model_refused.code : null;
      dl("software", [["Spoke", d.software_version], ["OS", d.system ? (d.system.os || "unknown") + " · kernel " + d.system.kernel : null],
        ["OS image", d.os && d.os.version ? d.os.version + (d.os.state ? " (" + d.os.state + ")" : "") : null],
        ["Model", d.model ? d.model + " (" + d.model_state + ")" : "none"],
        ["Desired model", d.desired && d.desired.model ? d.desired.model.name + "@" + d.desired.model.version
          : (d.desired && d.desired.note) || "none"],
        ["Placement rule", d.desired && d.desired.rule], ["Last refusal", refused]]);
      document.getElementById("alerts").replaceChildren(SpokeAlerts.activeTable(d.alerts, false));
      charts(health.points);
      document.getElementById("history").replaceChildren(d.model_history.length
        ? table(["Time", "What", "Version", "Code", "Detail"], d.model_history.map(historyRow), "history")
        : el("p", { class: "muted", text: "No model activations, rollbacks, refusals or software updates yet." }));
      document.getElementById("events").replaceChildren(d.recent_events.length
        ? table(["Time", "Kind", "Summary"], d.recent_events.map(eventRow), "events")
        : el("p", { class: "muted", text: "No events yet." }));
      showError(null);
      ready();
    } catch (e) {
      showError(e);
    }
  }

  load();
  setInterval(load, 30000);
})();
