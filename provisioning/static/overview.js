"use strict";
// Fleet overview: sites with online/stale/offline counts and the devices a selector picks,
// alerting devices first, 100 at a time (GET /api/v1/devices pages its results).

(() => {
  const { el, api, pct, ago, badge, labelText, deviceLink, table, row, showError, ready } = Spoke;
  const input = document.getElementById("selector");
  const more = document.getElementById("more");
  let cursor = null;
  let pagesLoaded = 0;

  function siteCard(s) {
    const total = s.online + s.stale + s.offline + s.revoked;
    const counts = el("p", { class: "counts" },
      badge(s.online + " online", "online"), " ",
      badge(s.stale + " stale", "stale"), " ",
      badge(s.offline + " offline", "offline"),
      s.revoked ? " " : null, s.revoked ? badge(s.revoked + " revoked", "revoked") : null);
    return el("article", { class: "card" + (s.alerting ? " alerting" : ""), "data-site": s.site },
      el("h4", { text: s.site }),
      el("p", { class: "muted", text: total + (total === 1 ? " device" : " devices") }),
      counts,
      s.alerting ? el("p", { class: "alert", text: s.alerting + " with active alerts" }) : null);
  }

  function deviceRow(d) {
    const alerts = d.alerts.map((a) => a.alert).join(", ");
    return row([
      deviceLink(d.id),
      d.site,
      badge(d.connectivity),
      ago(d.last_seen),
      d.model ? d.model + (d.model_state ? " (" + d.model_state + ")" : "") : "none",
      d.desired_model || "–",
      pct(d.health.cpu_ratio),
      pct(d.health.memory_used_ratio),
      pct(d.health.disk_used_ratio),
      alerts ? el("span", { class: "alert", text: alerts }) : "none",
      labelText(d.labels),
    ], { "data-device": d.id, class: d.alerts.length ? "alerting" : "" });
  }

  const HEADERS = ["Device", "Site", "Status", "Last seen", "Model", "Desired", "CPU", "Memory",
    "Disk", "Alerts", "Labels"];

  async function load(append) {
    const params = new URLSearchParams({ selector: input.value.trim(), limit: "100" });
    if (append && cursor) { params.set("cursor", cursor); }
    try {
      const page = await api("/api/v1/devices?" + params);
      const holder = document.getElementById("devices");
      if (!append) {
        const totals = page.sites.reduce((t, s) => {
          for (const k of ["online", "stale", "offline", "alerting"]) { t[k] += s[k]; }
          return t;
        }, { online: 0, stale: 0, offline: 0, alerting: 0 });
        document.getElementById("summary").textContent =
          page.total + (page.total === 1 ? " device" : " devices") + " in " + page.sites.length +
          (page.sites.length === 1 ? " site" : " sites") + " · " + totals.online + " online, " +
          totals.stale + " stale, " + totals.offline + " offline · " + totals.alerting +
          " alerting · updated " + new Date().toLocaleTimeString();
        document.getElementById("sites").replaceChildren(...page.sites.map(siteCard));
        holder.replaceChildren(table(HEADERS, page.items.map(deviceRow), "devices"));
        pagesLoaded = 1;
      } else {
        holder.querySelector("tbody").append(...page.items.map(deviceRow));
        pagesLoaded += 1;
      }
      cursor = page.next_cursor;
      more.hidden = !cursor;
      showError(null);
      ready();
    } catch (e) {
      showError(e);
    }
  }

  document.getElementById("filter").addEventListener("submit", (event) => {
    event.preventDefault();
    const url = new URL(window.location.href);
    if (input.value.trim()) { url.searchParams.set("selector", input.value.trim()); }
    else { url.searchParams.delete("selector"); }
    window.history.replaceState(null, "", url);
    load(false);
  });
  more.addEventListener("click", () => load(true));
  input.value = new URLSearchParams(window.location.search).get("selector") || "";
  load(false);
  // Refresh the first page on its own, unless the operator paged further down.
  setInterval(() => { if (pagesLoaded <= 1) { load(false); } }, 15000);
})();
