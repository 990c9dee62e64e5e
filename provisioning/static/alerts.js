"use strict";
// The active-alerts table the device page and the alerts page share, with its Acknowledge
// button: POST /api/v1/alerts/{event}/ack records the signed-in operator and the time.

const SpokeAlerts = (() => {
  const { el, api, when, badge, deviceLink, table, row, showError } = Spoke;

  function ackCell(alert) {
    const cell = el("span", { class: "ack" });
    const ack = alert.acknowledged;
    if (!alert.event_id) {
      cell.append(el("span", { class: "muted", text: "raised by the hub; ends when resolved" }));
      return cell;
    }
    if (ack) {
      cell.append(el("span", { class: "acked", text: "acknowledged by " + ack.by + ", " + when(ack.at) }));
      return cell;
    }
    const button = el("button", { type: "button", class: "ack-button", text: "Acknowledge",
      "data-event": alert.event_id });
    button.addEventListener("click", async () => {
      button.disabled = true;
      try {
        const result = await api("/api/v1/alerts/" + encodeURIComponent(alert.event_id) + "/ack",
          { method: "POST" });
        cell.replaceChildren(ackCell(Object.assign({}, alert, { acknowledged: result.acknowledged })));
        showError(null);
      } catch (e) {
        button.disabled = false;
        showError(e);
      }
    });
    cell.append(button);
    return cell;
  }

  function activeTable(alerts, withDevice) {
    if (!alerts.length) { return el("p", { class: "muted", text: "No active alerts." }); }
    const headers = [...(withDevice ? ["Device"] : []), "Alert", "Severity", "Subject", "Message",
      "Raised", "Acknowledged"];
    return table(headers, alerts.map((a) => row([
      ...(withDevice ? [deviceLink(a.device_id)] : []),
      a.alert, badge(a.severity || "warning"), a.subject, a.message, when(a.ts), ackCell(a),
    ], { "data-alert": a.event_id || a.alert, class: a.acknowledged ? "acknowledged" : "alerting" })), "alerts");
  }

  function eventTable(events, withDevice) {
    if (!events.length) { return el("p", { class: "muted", text: "None." }); }
    const headers = [...(withDevice ? ["Device"] : []), "Time", "Alert", "State", "Severity", "Message"];
    return table(headers, events.map((e) => row([
      ...(withDevice ? [deviceLink(e.device_id)] : []),
      when(e.ts), e.data.alert, badge(e.data.state, e.data.state), e.data.severity, e.data.message,
    ])), "events");
  }

  return { activeTable, eventTable };
})();
