"use strict";
// Hand-drawn SVG charts (no library): a line chart over time and a stacked bar chart.
// Colours come from the stylesheet through classes, so the CSP needs no inline styles.

const SpokeChart = (() => {
  const NS = "http://www.w3.org/2000/svg";
  const W = 600, H = 170, L = 44, R = 8, T = 10, B = 24;

  function svg(tag, attrs, text) {
    const node = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) { node.setAttribute(k, String(v)); }
    if (text !== undefined) { node.textContent = text; }
    return node;
  }

  function frame(title, yMax, unit, x0, x1) {
    const root = svg("svg", { viewBox: "0 0 " + W + " " + H, class: "chart", role: "img",
      "aria-label": title });
    root.append(svg("title", {}, title));
    for (const f of [0, 0.5, 1]) {
      const y = T + (H - T - B) * (1 - f);
      root.append(svg("line", { x1: L, x2: W - R, y1: y, y2: y, class: "grid" }));
      root.append(svg("text", { x: L - 4, y: y + 4, class: "tick", "text-anchor": "end" },
        (Math.round(yMax * f * 10) / 10) + unit));
    }
    const fmt = (t) => new Date(t * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
    root.append(svg("text", { x: L, y: H - 6, class: "tick" }, fmt(x0)));
    root.append(svg("text", { x: W - R, y: H - 6, class: "tick", "text-anchor": "end" }, fmt(x1)));
    return root;
  }

  // points: [{at, value}] oldest first; value null = no reading (a gap in the line).
  function line(title, points, opts) {
    const unit = opts.unit || "";
    const values = points.filter((p) => p.value !== null && p.value !== undefined);
    const figure = document.createElement("figure");
    figure.className = "chart-box";
    const caption = document.createElement("figcaption");
    caption.textContent = title + (values.length ? " · now " +
      (Math.round(values[values.length - 1].value * 10) / 10) + unit : "");
    figure.append(caption);
    if (!values.length) {
      const none = document.createElement("p");
      none.className = "muted";
      none.textContent = "no readings";
      figure.append(none);
      return figure;
    }
    const x0 = points[0].at, x1 = Math.max(points[points.length - 1].at, x0 + 1);
    const yMax = opts.max || Math.max(1, ...values.map((p) => p.value)) * 1.1;
    const root = frame(title, yMax, unit, x0, x1);
    const sx = (t) => L + (W - L - R) * (t - x0) / (x1 - x0);
    const sy = (v) => T + (H - T - B) * (1 - Math.min(v, yMax) / yMax);
    let run = [];
    const runs = [run];
    for (const p of points) {
      if (p.value === null || p.value === undefined) { run = []; runs.push(run); continue; }
      run.push(sx(p.at).toFixed(1) + "," + sy(p.value).toFixed(1));
    }
    for (const r of runs.filter((r) => r.length)) {
      root.append(svg("polyline", { points: r.join(" "), class: "series " + (opts.cls || "") }));
    }
    const last = values[values.length - 1];
    root.append(svg("circle", { cx: sx(last.at), cy: sy(last.value), r: 3, class: "dot " + (opts.cls || "") }));
    root.dataset.points = String(values.length);
    figure.append(root);
    return figure;
  }

  // bars: [{label, parts: {name: count}}]; names: stacking order (first at the bottom).
  function stacked(title, bars, names) {
    const figure = document.createElement("figure");
    figure.className = "chart-box";
    const caption = document.createElement("figcaption");
    caption.textContent = title;
    figure.append(caption);
    const totals = bars.map((b) => names.reduce((s, n) => s + (b.parts[n] || 0), 0));
    const yMax = Math.max(1, ...totals);
    const root = svg("svg", { viewBox: "0 0 " + W + " " + H, class: "chart", role: "img",
      "aria-label": title });
    root.append(svg("title", {}, title));
    root.append(svg("text", { x: L - 4, y: T + 4, class: "tick", "text-anchor": "end" }, String(yMax)));
    root.append(svg("line", { x1: L, x2: W - R, y1: H - B, y2: H - B, class: "grid" }));
    const slot = (W - L - R) / Math.max(1, bars.length);
    bars.forEach((b, i) => {
      let y = H - B;
      for (const n of names) {
        const h = (H - T - B) * (b.parts[n] || 0) / yMax;
        if (h > 0) {
          y -= h;
          const rect = svg("rect", { x: L + i * slot + slot * 0.15, y: y, width: slot * 0.7, height: h,
            class: "bar " + n });
          rect.append(svg("title", {}, b.label + ": " + (b.parts[n] || 0) + " " + n));
          root.append(rect);
        }
      }
    });
    if (bars.length) {
      root.append(svg("text", { x: L, y: H - 6, class: "tick" }, bars[0].label));
      root.append(svg("text", { x: W - R, y: H - 6, class: "tick", "text-anchor": "end" },
        bars[bars.length - 1].label));
    }
    root.dataset.bars = String(bars.length);
    figure.append(root);
    return figure;
  }

  return { line, stacked };
})();
