"use strict";
// Alerts across the fleet: every active one (acknowledged or not), then recent alert events
// paged back in time with GET /api/v1/alerts?before=.

(() => {
  const { api, showError, ready } = Spoke;
  const older = document.getElementById("older");
  let before = null;

  async function load(more) {
    try {
      const page = await api("/api/v1/alerts?limit=50" + (more && before ? "&before=" + before : ""));
      if (!more) {
        document.getElementById("active").replaceChildren(SpokeAlerts.activeTable(page.active, true));
        document.getElementById("recent").replaceChildren(SpokeAlerts.eventTable(page.recent, true));
      } else {
        const body = document.querySelector("#recent tbody");
        const extra = SpokeAlerts.eventTable(page.recent, true).querySelector("tbody");
        if (body && extra) { body.append(...extra.children); }
      }
      before = page.next_before;
      older.hidden = !before;
      showError(null);
      ready();
    } catch (e) {
      showError(e);
    }
  }

  older.addEventListener("click", () => load(true));
  load(false);
})();
