"use strict";
// Helpers every dashboard page shares. Everything shown is set with textContent (never HTML),
// every request goes to this hub's own /api/v1, and nothing is loaded from anywhere else.

const Spoke = (() => {
  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props || {})) {
      if (value === null || value === undefined || value === false) { continue; }
      if (key === "text") { node.textContent = value; }
      else if (key === "class") { node.className = value; }
      else if (key.startsWith("data-")) { node.dataset[key.slice(5).replace(/-(.)/g, (_, c) => c.toUpperCase())] = value; }
      else { node.setAttribute(key, value); }
    }
    for (const child of children) {
      if (child !== null && child !== undefined) {
        node.append(typeof child === "string" ? document.createTextNode(child) : child);
      }
    }
    return node;
  }

  async function api(path, options) {
    const response = await fetch(path, Object.assign({
      credentials: "same-origin", headers: { Accept: "application/json" },
    }, options || {}));
    if (response.status === 401) {
      window.location.assign("/login");
      throw new Error("signed out: sign in again");
    }
    let body = {};
    try { body = await response.json(); } catch (e) { body = {}; }
    if (!response.ok) { throw new Error(body.error || "HTTP " + response.status); }
    return body;
  }

  function pct(ratio) {
    return ratio === null || ratio === undefined ? "–" : Math.round(ratio * 100) + " %";
  }

  function ago(ts) {
    if (!ts) { return "never"; }
    const s = Math.max(0, Math.round(Date.now() / 1000 - ts));
    if (s < 120) { return s + " s ago"; }
    if (s < 7200) { return Math.round(s / 60) + " min ago"; }
    if (s < 172800) { return Math.round(s / 3600) + " h ago"; }
    return Math.round(s / 86400) + " days ago";
  }

  function when(ts) {
    return ts ? new Date(ts * 1000).toLocaleString() : "–";
  }

  function badge(text, cls) {
    return el("span", { class: "badge " + (cls || text), text: text });
  }

  function labelText(labels) {
    return Object.entries(labels || {}).map(([k, v]) => k + "=" + v).join(", ");
  }

  function deviceLink(id) {
    return el("a", { href: "/devices/" + encodeURIComponent(id), class: "id", text: id });
  }

  function table(headers, rows, cls) {
    const head = el("tr", {}, ...headers.map((h) => el("th", { scope: "col", text: h })));
    const body = el("tbody", {}, ...rows);
    return el("div", { class: "scroll" }, el("table", { class: cls || "" }, el("thead", {}, head), body));
  }

  function row(cells, props) {
    return el("tr", props || {}, ...cells.map((c) =>
      c instanceof Node ? el("td", {}, c) : el("td", { text: c === null || c === undefined ? "–" : String(c) })));
  }

  function showError(e) {
    const box = document.getElementById("error");
    if (!e) { box.hidden = true; return; }
    box.hidden = false;
    box.textContent = "Cannot load from the hub: " + (e.message || e);
  }

  function ready() {
    // The page tests read this: the time from navigation start to the first full render.
    if (!document.body.dataset.renderedMs) {
      document.body.dataset.renderedMs = String(Math.round(performance.now()));
    }
  }

  return { el, api, pct, ago, when, badge, labelText, deviceLink, table, row, showError, ready };
})();
