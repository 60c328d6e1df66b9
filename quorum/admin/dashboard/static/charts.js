// Line charts (uPlot, vendored) and the participation grid (SVG).
/* global uPlot */

export const PALETTE = [
  "#2f6fdb", "#e8702a", "#2e9d5b", "#8e44ad", "#cf3b3b", "#16a2b8", "#b5831a", "#6c757d",
];
const HEIGHT = 220;
const SVG = "http://www.w3.org/2000/svg";

/**
 * A chart of values per round. Its element carries what it draws for tests and scripts:
 * data-x (the rounds, JSON) and data-series (the labels, JSON).
 */
export class LineChart {
  constructor(el, yLabel) {
    this.el = el;
    this.yLabel = yLabel;
    this.plot = null;
    this.shape = "";
    new ResizeObserver(() => this.plot?.setSize({ width: this.width(), height: HEIGHT })).observe(el);
  }

  width() {
    return Math.max(this.el.clientWidth, 280);
  }

  /** x: rounds; series: [{label, values (one per x, null where none), dashed, color}]. */
  update(x, series) {
    this.el.dataset.x = JSON.stringify(x);
    this.el.dataset.series = JSON.stringify(series.map((s) => s.label));
    const data = [x, ...series.map((s) => s.values)];
    // A lone round draws no line: show it, and the baselines beside it, as points.
    const shape = JSON.stringify([x.length === 1, series.map((s) => [s.label, !!s.dashed])]);
    if (x.length === 0) {
      this.destroy();
      this.el.replaceChildren(Object.assign(document.createElement("p"), {
        className: "muted", textContent: "No rounds completed yet.",
      }));
      return;
    }
    if (this.plot && shape === this.shape) {
      this.plot.setData(data);
      return;
    }
    this.destroy();
    this.el.replaceChildren();
    this.shape = shape;
    const lone = x.length === 1;
    this.plot = new uPlot({
      width: this.width(),
      height: HEIGHT,
      scales: { x: { time: false } },
      legend: { live: false }, // labels only (live values read "--" until the cursor is over it)
      axes: [
        { label: "round", incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000] },
        { label: this.yLabel, size: 60 },
      ],
      series: [
        { label: "round" },
        ...series.map((s, i) => ({
          label: s.label,
          stroke: s.color ?? PALETTE[i % PALETTE.length],
          width: s.dashed ? 1.5 : 2,
          dash: s.dashed ? [6, 4] : undefined,
          points: { show: lone || !s.dashed },
          spanGaps: true,
        })),
      ],
    }, data, this.el);
  }

  destroy() {
    this.plot?.destroy();
    this.plot = null;
    this.shape = "";
  }
}

function node(name, attributes = {}, text) {
  const el = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attributes)) el.setAttribute(key, value);
  if (text !== undefined) el.textContent = text;
  return el;
}

export const CELL_STATES = {
  accepted: "accepted", ok: "ok (gossip)", offered: "in progress", refused: "refused by the site",
  rejected: "upload rejected", failed: "failed", timed_out: "timed out", lost: "lost",
  expired: "expired", cancelled: "cancelled", absent: "not in the cohort",
};

/** A grid of sites (rows) by rounds (columns), each cell coloured by the site's fit status. */
export function participationGrid(el, rounds, sites, cellOf) {
  const cw = 16, ch = 16, gap = 2, top = 18;
  const left = 12 + 7 * Math.max(4, ...sites.map((s) => s.length));
  const width = left + rounds.length * (cw + gap);
  const svg = node("svg", {
    width, height: top + sites.length * (ch + gap), role: "img",
    "aria-label": "participation per site and round",
  });
  const every = String(rounds.at(-1) ?? "").length > 2 ? 2 : 1; // 3-digit labels are wider than a cell
  rounds.forEach((round, j) => {
    if (j % every === 0 || j === rounds.length - 1) {
      svg.append(node("text", { x: left + j * (cw + gap), y: 12 }, String(round)));
    }
  });
  const used = new Set();
  sites.forEach((site, i) => {
    const y = top + i * (ch + gap);
    svg.append(node("text", { x: 0, y: y + ch - 4 }, site));
    rounds.forEach((round, j) => {
      const cell = cellOf(site, round) ?? { status: "absent" };
      const status = cell.status in CELL_STATES ? cell.status : "failed";
      used.add(status);
      const rect = node("rect", {
        x: left + j * (cw + gap), y, width: cw, height: ch, rx: 2, class: `cell-${status}`,
        "data-site": site, "data-round": round, "data-status": cell.status,
      });
      const detail = cell.error ? `: ${cell.error}` : "";
      rect.append(node("title", {}, `${site}, round ${round}: ${CELL_STATES[status]}${detail}`));
      svg.append(rect);
    });
  });
  const legend = document.createElement("div");
  legend.className = "legend";
  for (const [status, label] of Object.entries(CELL_STATES)) {
    if (!used.has(status)) continue;
    const item = document.createElement("span");
    const swatch = document.createElement("i");
    swatch.className = `cell-${status}`;
    item.append(swatch, label);
    legend.append(item);
  }
  el.replaceChildren(svg, legend);
}
