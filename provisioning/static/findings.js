"use strict";
// Detection summaries (GET /api/v1/findings): per site, severity counts per day and label
// counts; per mission, the counts and a link to the appliance's own report.

(() => {
  const { el, api, when, table, row, showError, ready } = Spoke;
  const days = document.getElementById("days");

  function labelList(labels) {
    const entries = Object.entries(labels);
    return entries.length ? entries.map(([k, v]) => k + " " + v).join(", ") : "none";
  }

  // One bar per UTC day of the period, empty days included, so the time axis is honest.
  function dayBars(s, period) {
    const byDay = Object.fromEntries(s.days.map((d) => [d.day, d.severity]));
    const now = Date.now();
    const bars = [];
    for (let i = period - 1; i >= 0; i -= 1) {
      const day = new Date(now - i * 86400000).toISOString().slice(0, 10);
      bars.push({ label: day, parts: byDay[day] || {} });
    }
    return bars;
  }

  function siteCard(s, severities, period) {
    const bars = dayBars(s, period);
    return el("article", { class: "card", "data-site": s.site },
      el("h4", { text: s.site }),
      el("p", { class: "muted", text: s.images + " images · " +
        severities.map((n) => s.severity[n] + " " + n).join(" · ") }),
      SpokeChart.stacked("Images by worst severity per day", bars, [...severities].reverse()),
      el("p", { class: "small", text: labelList(s.labels) }));
  }

  function missionRow(m, severities) {
    return row([
      m.mission, Spoke.deviceLink(m.device_id), m.site, m.images,
      ...severities.map((n) => m.severity[n]),
      labelList(m.labels), when(m.last),
      m.report_url ? el("a", { href: m.report_url, rel: "noreferrer", text: "report" }) : "–",
    ], { "data-mission": m.mission });
  }

  async function load() {
    try {
      const body = await api("/api/v1/findings?days=" + days.value);
      const sev = body.severities;
      document.getElementById("sites").replaceChildren(...(body.sites.length
        ? body.sites.map((s) => siteCard(s, sev, body.days))
        : [el("p", { class: "muted", text: "No detections in this period." })]));
      document.getElementById("missions").replaceChildren(body.missions.length
        ? table(["Mission", "Device", "Site", "Images", ...sev, "Labels", "Last", "Report"],
          body.missions.map((m) => missionRow(m, sev)), "missions")
        : el("p", { class: "muted", text: "No missions in this period." }));
      showError(null);
      ready();
    } catch (e) {
      showError(e);
    }
  }

  days.addEventListener("change", load);
  load();
})();
