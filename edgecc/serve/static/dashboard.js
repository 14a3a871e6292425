// Polls /v1/stats once a second and draws it. With a client token configured, open the page as
// /#token=THE_TOKEN once: the token is kept in this tab's session storage and sent as a bearer token.
"use strict";
(function () {
  const m = /token=([^&]+)/.exec(location.hash);
  if (m) { sessionStorage.setItem("edgecc-token", decodeURIComponent(m[1])); history.replaceState(null, "", location.pathname); }
})();

const $ = id => document.getElementById(id);
const ms = v => v == null ? "—" : (v >= 100 ? v.toFixed(0) : v.toFixed(1)) + " ms";

async function tick() {
  const token = sessionStorage.getItem("edgecc-token");
  let s;
  try {
    const r = await fetch("/v1/stats", { headers: token ? { Authorization: "Bearer " + token } : {}, cache: "no-store" });
    if (r.status === 401) { status("needs a token: open /#token=…", true); return; }
    if (!r.ok) { status(`stats: HTTP ${r.status}`, true); return; }
    s = await r.json();
  } catch (e) { status("service unreachable", true); return; }
  render(s);
}

function status(text, bad) { const el = $("status"); el.textContent = text; el.className = "status" + (bad ? " bad" : ""); }

function render(s) {
  $("config").textContent = `${s.scheme}, N=${s.N}, K=${s.K}, needs ${s.need}, window ${s.window_ms} ms`;
  status(s.draining ? "draining" : "live", s.draining);
  $("throughput").textContent = s.last_minute.images_per_s.toFixed(2);
  $("p50").textContent = ms(s.last_minute.p50_ms);
  $("p99").textContent = ms(s.last_minute.p99_ms);
  $("queue").textContent = `${s.queue_depth} / ${s.in_flight}`;
  $("late").textContent = s.late_results;
  const body = $("workers").querySelector("tbody");
  body.replaceChildren(...s.workers.map(w => {
    const tr = document.createElement("tr");
    tr.dataset.state = w.state;
    const cells = [w.index, w.address, w.state, ms(w.p50_ms), ms(w.p99_ms),
                   w.decoded_share == null ? "—" : (100 * w.decoded_share).toFixed(0) + "%", w.connects];
    for (const c of cells) { const td = document.createElement("td"); td.textContent = c; tr.appendChild(td); }
    if (w.last_error && w.state === "down") tr.title = w.last_error;
    return tr;
  }));
  const xs = s.series.map(b => b.t);
  lineChart($("latency-chart"), xs, [
    { name: "p50", values: s.series.map(b => b.p50_ms) },
    { name: "p99", values: s.series.map(b => b.p99_ms) },
    { name: "batching wait", values: s.series.map(b => b.queue_p50_ms), color: "#999" },
  ]);
  // per-worker result times when the master reports them, else how often each worker was among the first R
  const timed = s.series.some(b => b.worker_p50_ms.some(v => v != null));
  $("worker-caption").textContent = timed ? "Result latency per worker, p50 per second (ms)"
                                          : "Share of requests each worker was among the first R answers (%)";
  lineChart($("worker-chart"), xs, s.workers.map(w => ({
    name: `worker ${w.index}`,
    values: s.series.map(b => timed ? b.worker_p50_ms[w.index] : (b.requests ? 100 * b.decoded[w.index] / b.requests : null)),
  })));
  lineChart($("throughput-chart"), xs, [{ name: "images/s", values: s.series.map(b => b.images) }]);
  $("updated").textContent = new Date(s.time * 1000).toLocaleTimeString();
}

tick();
setInterval(tick, 1000);
