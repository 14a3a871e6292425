// A small line chart on a <canvas>: shared x axis (seconds), several series, gaps for missing points.
// Hand-written so the dashboard works offline with no build step.
"use strict";
const COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf", "#7f7f7f"];

function niceMax(v) {
  if (!(v > 0)) return 1;
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

// series: [{name, values: [number|null]}], xs: [unix seconds]
function lineChart(canvas, xs, series) {
  const ctx = canvas.getContext("2d");
  const W = canvas.width, H = canvas.height, L = 48, R = 110, T = 8, B = 22;
  ctx.clearRect(0, 0, W, H);
  ctx.font = "11px system-ui, sans-serif";
  let ymax = 0;
  for (const s of series) for (const v of s.values) if (v != null && v > ymax) ymax = v;
  ymax = niceMax(ymax);
  const x0 = xs.length ? xs[0] : 0, x1 = xs.length ? Math.max(xs[xs.length - 1], x0 + 1) : 1;
  const px = x => L + (x - x0) / (x1 - x0) * (W - L - R);
  const py = y => T + (1 - y / ymax) * (H - T - B);
  ctx.strokeStyle = "#dde"; ctx.fillStyle = "#667"; ctx.lineWidth = 1;
  for (let i = 0; i <= 4; i++) {
    const y = ymax * i / 4;
    ctx.beginPath(); ctx.moveTo(L, py(y)); ctx.lineTo(W - R, py(y)); ctx.stroke();
    ctx.fillText(y >= 100 ? y.toFixed(0) : y.toPrecision(2), 4, py(y) + 4);
  }
  if (xs.length) ctx.fillText(`last ${Math.round(x1 - x0)} s`, L, H - 6);
  series.forEach((s, k) => {
    ctx.strokeStyle = s.color || COLORS[k % COLORS.length]; ctx.lineWidth = 1.6;
    ctx.beginPath();
    let pen = false;
    s.values.forEach((v, i) => {
      if (v == null) { pen = false; return; }
      if (pen) ctx.lineTo(px(xs[i]), py(v)); else ctx.moveTo(px(xs[i]), py(v));
      pen = true;
    });
    ctx.stroke();
    ctx.fillStyle = ctx.strokeStyle;
    ctx.fillRect(W - R + 8, T + 4 + 15 * k, 10, 3);
    ctx.fillText(s.name, W - R + 22, T + 9 + 15 * k);
  });
}
