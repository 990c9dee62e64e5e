"use strict";
// Rollouts per placement rule (GET /api/v1/rollouts): target version, where the rule's
// devices are with it, the canary's share, and a stalled rollout called out at the top.

(() => {
  const { el, api, badge, deviceLink, table, row, showError, ready } = Spoke;

  function canary(r) {
    if (!r.canary_percent) { return "none"; }
    return el("span", {},
      r.canary_percent + " % · " + r.canary_committed + " of " + r.canary_devices.length + " committed",
      el("br"), el("span", { class: "muted small", text: r.canary_devices.join(", ") }));
  }

  function ruleRow(r) {
    return row([
      el("span", {}, el("strong", { text: r.rule }), el("br"), el("code", { text: r.selector || "(all devices)" })),
      badge(r.phase, "phase " + r.phase),
      r.model + " " + (r.target ? r.target + (r.previous ? " (from " + r.previous + ")" : "") : "– none published"),
      r.devices, r.on_target, r.probation, r.committed, r.rolled_back, r.refused,
      canary(r),
    ], { "data-rule": r.rule, class: r.phase === "stalled" ? "stalled" : "" });
  }

  async function load() {
    try {
      const body = await api("/api/v1/rollouts");
      const stalled = body.rules.filter((r) => r.phase === "stalled");
      document.getElementById("stalled").replaceChildren(...stalled.map((r) =>
        el("p", { class: "banner", role: "alert", "data-stalled": r.rule },
          "Rollout of " + r.model + "@" + r.target + " (rule " + r.rule + ") is stalled: ",
          ...r.stalled_devices.flatMap((d, i) => [i ? ", " : "", deviceLink(d)]),
          " failed the health gate twice.")));
      document.getElementById("rules").replaceChildren(body.rules.length
        ? table(["Rule", "Phase", "Target", "Devices", "On target", "Probation", "Committed",
          "Rolled back", "Refused", "Canary"], body.rules.map(ruleRow), "rollouts")
        : el("p", { class: "muted", text: "No placement policy yet: apply one with `spoke-hub policy apply`." }));
      showError(null);
      ready();
    } catch (e) {
      showError(e);
    }
  }

  load();
  setInterval(load, 15000);
})();
