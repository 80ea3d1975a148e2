// Line charts in SVG: one series per node (x = round, y = a value), axes with round-number ticks.
// Each node keeps its colour and marker shape on every chart (colour-blind safe palette, and the shape
// tells the nodes apart without colour); every point has a tooltip with its values.
"use strict";

const SCChart = (() => {
  const NS = "http://www.w3.org/2000/svg";
  const W = 640, H = 300, M = { left: 64, right: 16, top: 14, bottom: 44 };
  // Okabe–Ito colours (colour-blind safe), the light ones darkened to 3:1 against white; no yellow.
  const COLOURS = ["#0072B2", "#D55E00", "#009E73", "#B8558F", "#A86E00", "#3A7FAE", "#000000"];
  const SHAPES = ["circle", "square", "diamond", "triangle", "down"];

  function node(tag, attrs = {}, text) {
    const n = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, String(v));
    if (text !== undefined) n.textContent = text;
    return n;
  }

  // About `count` evenly spaced round numbers (1, 2 or 5 times a power of ten) covering [lo, hi].
  function ticks(lo, hi, count, integer) {
    if (hi === lo) { lo -= integer ? 1 : Math.abs(lo) * 0.1 || 1; hi += integer ? 1 : Math.abs(hi) * 0.1 || 1; }
    const raw = (hi - lo) / count;
    const mag = 10 ** Math.floor(Math.log10(raw));
    let step = [1, 2, 5, 10].map((f) => f * mag).find((s) => s >= raw) || 10 * mag;
    if (integer) step = Math.max(1, Math.round(step));
    const start = Math.floor(lo / step) * step, end = Math.ceil(hi / step) * step;
    const out = [];
    for (let v = start; v <= end + step / 2; v += step) out.push(Number(v.toPrecision(12)));
    return out;
  }

  function marker(shape, x, y, colour) {
    const r = 4;
    const d = {
      circle: `M${x - r},${y}a${r},${r} 0 1,0 ${2 * r},0a${r},${r} 0 1,0 ${-2 * r},0`,
      square: `M${x - r},${y - r}h${2 * r}v${2 * r}h${-2 * r}z`,
      diamond: `M${x},${y - r - 1}l${r + 1},${r + 1}l${-r - 1},${r + 1}l${-r - 1},${-r - 1}z`,
      triangle: `M${x},${y - r - 1}l${r + 1},${2 * r + 1}h${-2 * r - 2}z`,
      down: `M${x},${y + r + 1}l${r + 1},${-2 * r - 1}h${-2 * r - 2}z`,
    }[shape];
    return node("path", { d, fill: colour, stroke: "#ffffff", "stroke-width": 1 });
  }

  // series: [{name, points: [{x, y}]}] in a stable order (the caller sorts the node names);
  // opts: {xLabel, yLabel, empty, describe(point) -> tooltip}. Returns the number of points drawn.
  function draw(svg, legend, series, opts) {
    svg.replaceChildren();
    const all = series.flatMap((s) => s.points);
    const title = node("title", {}, opts.title);
    svg.append(title);
    if (!all.length) {
      svg.append(node("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "empty-note" }, opts.empty));
      legend.replaceChildren();
      return 0;
    }
    const xs = all.map((p) => p.x), ys = all.map((p) => p.y);
    const xt = ticks(Math.min(...xs), Math.max(...xs), Math.min(8, Math.max(...xs) - Math.min(...xs) || 1), true);
    const yt = ticks(Math.min(...ys), Math.max(...ys), 5, false);
    const [x0, x1, y0, y1] = [xt[0], xt[xt.length - 1], yt[0], yt[yt.length - 1]];
    const px = (x) => M.left + ((x - x0) / (x1 - x0 || 1)) * (W - M.left - M.right);
    const py = (y) => H - M.bottom - ((y - y0) / (y1 - y0 || 1)) * (H - M.top - M.bottom);

    const grid = node("g", { "aria-hidden": "true" });
    for (const v of yt) {
      grid.append(node("line", { class: "grid", x1: M.left, x2: W - M.right, y1: py(v), y2: py(v) }));
      grid.append(node("text", { x: M.left - 6, y: py(v) + 4, "text-anchor": "end" }, SC.fmt(v, 3)));
    }
    for (const v of xt) {
      grid.append(node("text", { x: px(v), y: H - M.bottom + 16, "text-anchor": "middle" }, String(v)));
    }
    grid.append(node("line", { class: "axis", x1: M.left, x2: W - M.right, y1: H - M.bottom, y2: H - M.bottom }));
    grid.append(node("line", { class: "axis", x1: M.left, x2: M.left, y1: M.top, y2: H - M.bottom }));
    grid.append(node("text", { x: (M.left + W - M.right) / 2, y: H - 6, "text-anchor": "middle" }, opts.xLabel));
    grid.append(node("text", { x: 14, y: (M.top + H - M.bottom) / 2, "text-anchor": "middle",
      transform: `rotate(-90 14 ${(M.top + H - M.bottom) / 2})` }, opts.yLabel));
    svg.append(grid);

    legend.replaceChildren();
    let drawn = 0;
    series.forEach((s, i) => {
      const colour = COLOURS[i % COLOURS.length], shape = SHAPES[i % SHAPES.length];
      const g = node("g", { "data-testid": "series", "data-node": s.name });
      const pts = [...s.points].sort((a, b) => a.x - b.x);
      if (pts.length > 1) {
        g.append(node("polyline", { points: pts.map((p) => `${px(p.x)},${py(p.y)}`).join(" "),
          fill: "none", stroke: colour, "stroke-width": 2, "stroke-linejoin": "round" }));
      }
      for (const p of pts) {
        const m = marker(shape, px(p.x), py(p.y), colour);
        m.setAttribute("data-testid", "point");
        m.setAttribute("data-node", s.name);
        m.setAttribute("data-round", String(p.x));
        m.append(node("title", {}, opts.describe(s.name, p)));
        g.append(m);
        drawn += 1;
      }
      svg.append(g);
      const sw = document.createElement("span");
      sw.className = "swatch";
      sw.style.backgroundColor = colour;
      const li = document.createElement("li");
      const symbol = { circle: "●", square: "■", diamond: "◆", triangle: "▲", down: "▼" }[shape];
      li.append(sw, document.createTextNode(`${s.name} ${symbol}${s.points.length ? "" : " (no values)"}`));
      legend.append(li);
    });
    svg.dataset.points = String(drawn);
    return drawn;
  }

  return { draw };
})();
