// The run page: draws the graph from /api/layout (the `viz` geometry), then follows
// /api/events (server-sent events) for live state, curves, held-out points and samples.
"use strict";
const token = new URLSearchParams(location.search).get("token") || "";
const q = (path) => path + (path.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(token);
const SVGNS = "http://www.w3.org/2000/svg";
const S = 80, BOX_W = 1.9, BOX_H = 1.1;  // px per layout unit; node box in layout units (viz: 1.9)
const COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf"];
let layout = null, lastFiles = null, lastState = null;

function el(tag, attrs, parent, text) {
  const node = document.createElementNS(SVGNS, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  if (parent) parent.appendChild(node);
  return node;
}
const fmt = (v, digits = 1) => v === null || v === undefined ? "–" :
  Math.abs(v) >= 1000 ? Math.round(v).toLocaleString() : (+v).toFixed(digits);

// ---------------------------------------------------------------- graph
function drawGraph() {
  const svg = document.getElementById("graph");
  svg.innerHTML = "";
  const xs = layout.nodes.map(n => n.x * S), ys = layout.nodes.map(n => -n.y * S);
  const left = Math.min(...xs) - BOX_W * S / 2 - 10, right = Math.max(...xs) + BOX_W * S / 2 + 10;
  const top = Math.min(...ys) - BOX_H * S / 2 - 40, bottom = Math.max(...ys) + BOX_H * S / 2 + 150;
  svg.setAttribute("viewBox", `${left} ${top} ${right - left} ${bottom - top}`);
  svg.style.height = Math.min(520, Math.max(220, (bottom - top) * svg.clientWidth / (right - left))) + "px";
  el("defs", {}, svg).innerHTML =
    '<marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#333"/></marker>' +
    '<marker id="arrow-w" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#c0392b"/></marker>';
  const pos = Object.fromEntries(layout.nodes.map(n => [n.name, [n.x * S, -n.y * S]]));
  const w = BOX_W * S, h = BOX_H * S;
  for (const e of layout.edges) {
    const [x0, y0] = pos[e.src], [x1, y1] = pos[e.dst];
    const back = x1 <= x0;
    const g = el("g", {class: "edge" + (e.weights ? " weights" : ""), "data-edge": e.index, "data-label": e.label}, svg);
    let d, mx, my;
    if (back) {  // the feedback arc, below the boxes, as viz draws it
      const sx = x0, sy = y0 + h / 2, ex = x1, ey = y1 + h / 2;
      const dip = Math.min(95, Math.abs(x1 - x0) * 0.2 + 40);
      d = `M${sx},${sy} C${sx},${sy + dip} ${ex},${ey + dip} ${ex},${ey}`;
      mx = (sx + ex) / 2; my = Math.max(sy, ey) + dip * 0.75 + 14;
    } else {
      const sx = x0 + w / 2, ex = x1 - w / 2;
      d = `M${sx},${y0} L${ex},${y1}`;
      mx = (sx + ex) / 2; my = (y0 + y1) / 2 - 22;
    }
    el("path", {d, "marker-end": e.weights ? "url(#arrow-w)" : "url(#arrow)"}, g);
    el("text", {x: mx, y: my, "text-anchor": "middle", class: "label"}, g, e.record);
    el("text", {x: mx, y: my + 11, "text-anchor": "middle", class: "counts"}, g, "0/" + e.capacity);
    el("rect", {x: mx - 25, y: my + 14, width: 50, height: 5, class: "bar-bg"}, g);
    el("rect", {x: mx - 25, y: my + 14, width: 0, height: 5, class: "bar", fill: "#2e8b57"}, g);
    el("text", {x: mx, y: my + 46, "text-anchor": "middle", class: "rate"}, g, "");
  }
  for (const n of layout.nodes) {
    const [x, y] = pos[n.name];
    const g = el("g", {class: "node", "data-node": n.name, transform: `translate(${x},${y})`}, svg);
    el("rect", {x: -w / 2, y: -h / 2, width: w, height: h, rx: 10, fill: n.colour, class: "box"}, g);
    el("text", {y: -h / 2 + 17, "text-anchor": "middle", class: "name"}, g, n.name);
    el("text", {y: -h / 2 + 31, "text-anchor": "middle", class: "kind"}, g,
       n.kind + (n.replicas > 1 ? " ×" + n.replicas : ""));
    el("text", {y: -h / 2 + 46, "text-anchor": "middle", class: "state"}, g, "–");
    el("text", {y: -h / 2 + 60, "text-anchor": "middle", class: "counts"}, g, "");
    el("text", {y: -h / 2 + 74, "text-anchor": "middle", class: "extra"}, g, "");
    g.addEventListener("click", () => showLog(n.name));
  }
}

function updateGraph(state) {
  for (const n of layout.nodes) {
    const g = document.querySelector(`g.node[data-node="${n.name}"]`);
    const s = state.nodes[n.name];
    if (!g || !s) continue;
    const word = s.state.split(" ")[0];
    g.setAttribute("class", "node " + word + (s.restarts ? " restarted" : ""));
    for (const key of ["state", "restarts", "in", "out", "rate"]) g.dataset[key] = s[key];
    const st = g.querySelector("text.state");
    st.textContent = s.state + (s.restarts ? ` · ${s.restarts} restart${s.restarts > 1 ? "s" : ""}` : "");
    st.setAttribute("class", "state state-" + word);
    g.querySelector("text.counts").textContent = `${fmt(s.rate, 2)} b/s · ${fmt(s.in, 0)} in · ${fmt(s.out, 0)} out`;
    const tok = s.gen_tokens_per_s ?? s.tokens_per_s;
    g.querySelector("text.extra").textContent =
      (tok !== undefined ? `${fmt(tok, 0)} tok/s · ` : "") + (s.rss_mb ? `${fmt(s.rss_mb, 0)} MB` : "");
  }
  for (const e of layout.edges) {
    const g = document.querySelector(`g.edge[data-edge="${e.index}"]`);
    const s = state.edges[String(e.index)] || {depth: 0, received: 0, rate: 0};
    g.dataset.received = s.received; g.dataset.depth = s.depth;
    g.querySelector("text.counts").textContent = `queue ${fmt(s.depth, 0)}/${e.capacity}`;
    g.querySelector("text.rate").textContent = `${fmt(s.rate, 2)} b/s · ${fmt(s.received, 0)}`;
    const frac = Math.min(1, s.depth / Math.max(1, e.capacity));
    const bar = g.querySelector("rect.bar");
    bar.setAttribute("width", 50 * frac);
    bar.setAttribute("fill", frac > 0.8 ? "#c0392b" : frac > 0.5 ? "#e69b00" : "#2e8b57");
  }
}

// ---------------------------------------------------------------- panels
function updateHeader(state) {
  const badge = document.getElementById("status");
  badge.textContent = state.status; badge.className = "badge " + state.status;
  const m = Math.floor(state.elapsed_s / 60), s = Math.floor(state.elapsed_s % 60);
  document.getElementById("clock").textContent =
    `elapsed ${m}:${String(s).padStart(2, "0")} · policy version ${state.version}`;
  const failure = document.getElementById("failure");
  failure.hidden = !state.failure; failure.textContent = state.failure || "";
}

function updateGate(state) {
  const table = document.getElementById("gate");
  if (!state.gate) { table.innerHTML = "<tr><td>no staleness gate (no trainer)</td></tr>"; return; }
  const g = state.gate;
  const rows = [["admitted", g.admitted], ["running", g.running], ["accepted", g.accepted],
    ["capacity left", g.capacity === null ? "∞" : g.capacity], ["rejected", g.rejected],
    ["lost (restarts)", g.lost], ["serving version", g.serving], ["mean lag", g.lag_mean]];
  table.innerHTML = rows.map(([k, v]) =>
    `<tr><td>${k}</td><td class="num" data-gate="${k}">${typeof v === "number" ? fmt(v, Number.isInteger(v) ? 0 : 2) : (v ?? "–")}</td></tr>`).join("");
  const svg = document.getElementById("lag");
  svg.innerHTML = "";
  const lags = Object.entries(state.lag).map(([k, v]) => [+k, v]).sort((a, b) => a[0] - b[0]);
  if (!lags.length) return;
  const width = svg.clientWidth || 300, height = 110, max = Math.max(...lags.map(l => l[1]));
  const bw = Math.min(40, (width - 20) / lags.length - 4);
  lags.forEach(([lag, count], i) => {
    const bh = (height - 30) * count / max, x = 10 + i * (bw + 4);
    el("rect", {x, y: height - 15 - bh, width: bw, height: bh}, svg);
    el("text", {x: x + bw / 2, y: height - 3, "text-anchor": "middle"}, svg, "lag " + lag);
    el("text", {x: x + bw / 2, y: height - 18 - bh, "text-anchor": "middle"}, svg, count);
  });
}

function chart(parent, title, series, xmode) {
  const box = document.createElement("div"); box.className = "chart";
  box.innerHTML = `<div class="title">${title}</div>`;
  parent.appendChild(box);
  const svg = el("svg", {viewBox: "0 0 300 130", preserveAspectRatio: "none"}, box);
  const pts = series.flatMap(s => s.points);
  if (!pts.length) { el("text", {x: 150, y: 65, "text-anchor": "middle"}, svg, "no data yet"); return; }
  const xi = xmode === "wall" ? 1 : 0;
  let x0 = Math.min(...pts.map(p => p[xi])), x1 = Math.max(...pts.map(p => p[xi]));
  let y0 = Math.min(...pts.map(p => p[2])), y1 = Math.max(...pts.map(p => p[2]));
  if (x1 === x0) x1 = x0 + 1;
  if (y1 === y0) { y0 -= 0.5; y1 += 0.5; }
  const X = v => 34 + (v - x0) / (x1 - x0) * 258, Y = v => 112 - (v - y0) / (y1 - y0) * 100;
  el("line", {x1: 34, y1: 112, x2: 292, y2: 112, class: "axis"}, svg);
  el("line", {x1: 34, y1: 12, x2: 34, y2: 112, class: "axis"}, svg);
  el("text", {x: 30, y: 16, "text-anchor": "end"}, svg, fmt(y1, 2));
  el("text", {x: 30, y: 112, "text-anchor": "end"}, svg, fmt(y0, 2));
  el("text", {x: 34, y: 125}, svg, fmt(x0, 0));
  el("text", {x: 292, y: 125, "text-anchor": "end"}, svg, fmt(x1, 0) + (xmode === "wall" ? " s" : ""));
  series.forEach((s, i) => {
    if (!s.points.length) return;
    const colour = s.colour || COLOURS[i % COLOURS.length];
    el("path", {class: "line", stroke: colour,
      d: s.points.map((p, j) => (j ? "L" : "M") + X(p[xi]).toFixed(1) + "," + Y(p[2]).toFixed(1)).join(" ")}, svg);
    for (const p of s.points.length < 40 ? s.points : []) el("circle", {cx: X(p[xi]), cy: Y(p[2]), r: 2, fill: colour}, svg);
    el("text", {x: 40 + i * 90, y: 9, fill: colour}, svg, s.name);
  });
}

function updateFiles(files) {
  const xmode = document.getElementById("xmode").value;
  const c = files.curves, charts = document.getElementById("charts");
  charts.innerHTML = "";
  const get = k => ({name: k, points: c[k] || []});
  chart(charts, "reward (mean)", [get("reward_mean")], xmode);
  chart(charts, "accuracy (reward/correct) and format", [get("reward/correct"), get("reward/format_ok")], xmode);
  chart(charts, "loss", [get("loss")], xmode);
  chart(charts, "training tokens/s", [get("tokens_per_s")], xmode);
  const evals = files.evals || [];
  const evalBox = document.getElementById("eval-chart");
  evalBox.innerHTML = "";
  const keys = [...new Set(evals.flatMap(e => Object.keys(e)))]
    .filter(k => k.startsWith("eval/") && k.split("/").length === 2);
  chart(evalBox, `${evals.length} held-out point${evals.length === 1 ? "" : "s"}`,
    keys.map(k => ({name: k.slice(5), points: evals.filter(e => k in e).map(e => [e.step, e.wall_s, e[k]])})), xmode);
  evalBox.dataset.points = evals.length;
  const last = evals[evals.length - 1];
  document.getElementById("eval-note").textContent = last ?
    `${last.problems} problems × ${last.samples} samples, last at step ${last.step}` : "every N steps with evaluation.every";
  const samples = files.samples || {};
  document.getElementById("samples-step").textContent = samples.step ? "step " + samples.step : "none yet";
  const esc = s => String(s).replace(/[&<>]/g, ch => ({"&": "&amp;", "<": "&lt;", ">": "&gt;"}[ch]));
  document.getElementById("samples").innerHTML = (samples.rows || []).length ?
    "<tr><th>prompt (end)</th><th>response</th><th>answer</th><th>reward</th></tr>" +
    samples.rows.map(r => `<tr><td>${esc(r.prompt)}</td><td>${esc(r.response)}</td><td>${esc(r.answer)}</td><td class="num">${fmt(r.reward, 2)}</td></tr>`).join("") : "";
}

async function showLog(name) {
  const panel = document.getElementById("log-panel");
  const data = await (await fetch(q("/api/logs/" + encodeURIComponent(name)))).json();
  document.getElementById("log-node").textContent = name;
  document.getElementById("log").textContent = Object.entries(data)
    .map(([replica, lines]) => `── ${replica} ──\n` + (lines.length ? lines.join("\n") : "(no log yet)")).join("\n\n");
  panel.hidden = false;
  panel.scrollIntoView({behavior: "smooth"});
}

async function main() {
  layout = await (await fetch(q("/api/layout"))).json();
  document.getElementById("title").textContent = layout.name;
  document.title = layout.name + " · areal-flow";
  drawGraph();
  const source = new EventSource(q("/api/events"));
  source.addEventListener("state", ev => {
    lastState = JSON.parse(ev.data);
    updateHeader(lastState); updateGraph(lastState); updateGate(lastState);
    document.body.dataset.seq = lastState.seq;
  });
  source.addEventListener("files", ev => { lastFiles = JSON.parse(ev.data); updateFiles(lastFiles); });
  source.onerror = () => {
    const badge = document.getElementById("status");
    if (lastState && lastState.status === "running") { badge.textContent = "disconnected"; badge.className = "badge disconnected"; }
  };
  document.getElementById("xmode").addEventListener("change", () => lastFiles && updateFiles(lastFiles));
  document.getElementById("log-close").addEventListener("click", () => { document.getElementById("log-panel").hidden = true; });
}
main();
