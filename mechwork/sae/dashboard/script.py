"""The dashboard page's inline script (plain JavaScript, no library). Data reach the DOM only via textContent."""

SCRIPT = r"""
(function () {
"use strict";
const D = JSON.parse(document.getElementById("mw-data").textContent);
const S = D.strings, IX = D.index, N = IX.freq.length;
function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined && text !== null) e.textContent = String(text);
  return e;
}
function fmt(v) {
  if (v === null || v === undefined) return "";
  const a = Math.abs(v);
  return (a >= 1e4 || (a < 1e-3 && a !== 0)) ? v.toExponential(2) : String(+v.toPrecision(3));
}
function pct(v) { return v === null ? "" : (100 * v).toFixed(3) + "%"; }
const LV = {strong: "lv-strong", narrow: "lv-narrow", weak: "lv-weak", none: "lv-none", tokens: "lv-tokens",
            dead: "lv-none"};

const infoParts = Object.keys(D.info).map(function (k) { return k + ": " + D.info[k]; });
infoParts.push("tokens counted: " + D.n_tokens.toLocaleString());
document.getElementById("mw-info").appendChild(el("p", "st", infoParts.join(" \u00b7 ")));

const cols = [["latent", function (j) { return j; }, String],
              ["freq", function (j) { return IX.freq[j]; }, pct],
              ["max", function (j) { return IX.max[j]; }, fmt],
              ["label", function (j) { return IX.label[j]; }, String]];
if (D.tags) {
  cols.push(["F1", function (j) { return IX.f1[j]; }, fmt], ["precision", function (j) { return IX.p[j]; }, fmt],
            ["recall", function (j) { return IX.r[j]; }, fmt]);
}
cols.push(["top tokens", function (j) { return IX.tokens[j]; }, String],
          ["special", function (j) { return IX.special[j]; }, String]);
const hay = [];
for (let j = 0; j < N; j++) hay.push((j + " " + IX.label[j] + " " + IX.tokens[j]).toLowerCase());
let rows = [], page = 0, selected = -1, sortCol = D.tags ? "F1" : "freq", sortDesc = true;
const PER = 100;

function refresh() {
  const q = document.getElementById("mw-q").value.trim().toLowerCase();
  const alive = document.getElementById("mw-alive").checked;
  const col = cols.find(function (c) { return c[0] === sortCol; });
  rows = [];
  for (let j = 0; j < N; j++) {
    if (alive && IX.level[j] === "dead") continue;
    if (q && hay[j].indexOf(q) < 0) continue;
    rows.push(j);
  }
  rows.sort(function (a, b) {
    let x = col[1](a), y = col[1](b);
    if (x === null) x = -Infinity;
    if (y === null) y = -Infinity;
    const c = (typeof x === "string") ? x.localeCompare(y) : (x - y);
    return (sortDesc ? -c : c) || (a - b);
  });
  page = Math.min(page, Math.max(0, Math.ceil(rows.length / PER) - 1));
  draw();
}

function draw() {
  const box = document.getElementById("mw-index");
  box.textContent = "";
  const t = el("table", "ix"), hr = el("tr");
  cols.forEach(function (c) {
    const th = el("th", "", c[0] + (c[0] === sortCol ? (sortDesc ? " \u25bc" : " \u25b2") : ""));
    th.onclick = function () {
      if (sortCol === c[0]) sortDesc = !sortDesc; else { sortCol = c[0]; sortDesc = c[0] !== "latent" && c[0] !== "label"; }
      refresh();
    };
    hr.appendChild(th);
  });
  t.appendChild(hr);
  rows.slice(page * PER, (page + 1) * PER).forEach(function (j) {
    const tr = el("tr", j === selected ? "sel" : "");
    cols.forEach(function (c) {
      const td = el("td", (c[0] === "label" || c[0] === "top tokens") ? "l" : "", c[2](c[1](j)));
      if (c[0] === "label") { td.classList.add(LV[IX.level[j]] || ""); td.title = IX.evidence[j]; }
      tr.appendChild(td);
    });
    tr.onclick = function () { location.hash = String(j); };
    t.appendChild(tr);
  });
  box.appendChild(t);
  document.getElementById("mw-count").textContent = rows.length + " of " + N + " latents";
  document.getElementById("mw-page").textContent =
    " page " + (page + 1) + " / " + Math.max(1, Math.ceil(rows.length / PER)) + " ";
}

function ctxDiv(c, peak) {
  const value = c[0], toks = c[1], q = c[2], tag = c[3], target = D.left;
  const d = el("div", "ctx");
  d.appendChild(el("span", "v", fmt(value)));
  const own = toks.some(function (i) { return i >= 0 && /^\s/.test(S[i]); });
  let first = true;
  toks.forEach(function (ti, i) {
    if (ti < 0) return;
    if (!own && !first) d.appendChild(document.createTextNode(" "));
    first = false;
    const sp = el("span", i === target ? "t" : "", S[ti]);
    const lv = parseInt(q.charAt(i), 36) / 35;
    sp.style.background = "rgba(255,110,0," + lv.toFixed(2) + ")";
    sp.title = i === target ? fmt(value) : "\u2248" + fmt(lv * peak);
    d.appendChild(sp);
  });
  if (tag >= 0) d.appendChild(el("span", "tag", " " + D.tag_names[tag]));
  return d;
}

function histSvg(h) {
  const NS = "http://www.w3.org/2000/svg", W = 300, H = 90;
  if (!h) return el("p", "muted", "no firings");
  const e0 = h[0], ratio = h[1], counts = h[2], top = Math.max.apply(null, counts) || 1, w = W / counts.length;
  const svg = document.createElementNS(NS, "svg");
  svg.setAttribute("class", "hist"); svg.setAttribute("width", W); svg.setAttribute("height", H + 14);
  counts.forEach(function (c, i) {
    const r = document.createElementNS(NS, "rect");
    r.setAttribute("x", (i * w).toFixed(1)); r.setAttribute("width", Math.max(w - 1, 0.5).toFixed(1));
    r.setAttribute("y", (H - H * c / top).toFixed(1)); r.setAttribute("height", (H * c / top).toFixed(1));
    const ti = document.createElementNS(NS, "title");
    ti.textContent = fmt(e0 * Math.pow(ratio, i)) + "-" + fmt(e0 * Math.pow(ratio, i + 1)) + ": " + c;
    r.appendChild(ti); svg.appendChild(r);
  });
  [[0, "start", e0], [W, "end", e0 * Math.pow(ratio, counts.length)]].forEach(function (a) {
    const tx = document.createElementNS(NS, "text");
    tx.setAttribute("x", a[0]); tx.setAttribute("y", H + 12); tx.setAttribute("text-anchor", a[1]);
    tx.textContent = fmt(a[2]); svg.appendChild(tx);
  });
  return svg;
}

function logitsDiv(lg) {
  if (!lg) return el("p", "muted", "logit effects: " + (D.logits_reason || "unavailable"));
  const row = el("div", "row");
  ["promotes", "suppresses", "embedding ~"].forEach(function (name, k) {
    if (!lg[k]) return;
    const t = el("table", "lg"), hr = el("tr"), th = el("th", "", name);
    th.colSpan = 2; hr.appendChild(th); t.appendChild(hr);
    lg[k][0].forEach(function (i, n) {
      const tr = el("tr");
      tr.appendChild(el("td", "tok", S[i]));
      const v = lg[k][1][n];
      tr.appendChild(el("td", "", (v >= 0 ? "+" : "") + fmt(v)));
      t.appendChild(tr);
    });
    row.appendChild(t);
  });
  return row;
}

function card(j) {
  const L = D.latents[j], box = document.getElementById("mw-card"), peak = IX.max[j];
  box.textContent = "";
  const h = el("h3", "", "latent " + j + " ");
  h.appendChild(el("span", "lab " + (LV[IX.level[j]] || ""), IX.label[j]));
  box.appendChild(h);
  box.appendChild(el("p", "ev", IX.evidence[j]));
  const q = D.quantiles.map(function (p, i) { return L[3][i] === null ? "" : "p" + Math.round(100 * p) + "=" + fmt(L[3][i]); });
  let st = "fires on " + pct(IX.freq[j]) + " of " + D.n_tokens.toLocaleString() + " tokens \u00b7 max " + fmt(IX.max[j]);
  if (IX.special[j]) st += " \u00b7 " + IX.special[j] + " firings on special tokens left out";
  box.appendChild(el("p", "st", st));
  box.appendChild(el("p", "st", q.join(" ")));
  const row = el("div", "row"), hd = el("div");
  hd.appendChild(histSvg(L[2])); row.appendChild(hd); row.appendChild(logitsDiv(L[4]));
  box.appendChild(row);
  box.appendChild(el("h4", "", "top activations"));
  if (!L[0].length) box.appendChild(el("p", "muted", "never fires on these tokens"));
  L[0].forEach(function (c) { box.appendChild(ctxDiv(c, peak)); });
  if (L[1].length) box.appendChild(el("h4", "", "samples by quantile band"));
  for (let b = D.bands - 1; b >= 0; b--) {
    const items = L[1].filter(function (c) { return c[4] === b; });
    if (!items.length) continue;
    const vals = items.map(function (c) { return c[0]; });
    box.appendChild(el("p", "band", "quantiles " + (b / D.bands).toFixed(2) + "-" + ((b + 1) / D.bands).toFixed(2) +
      " (activations " + fmt(Math.min.apply(null, vals)) + "-" + fmt(Math.max.apply(null, vals)) + ")"));
    items.forEach(function (c) { box.appendChild(ctxDiv(c, peak)); });
  }
  selected = j;
  draw();
}

function fromHash() {
  const j = parseInt(location.hash.slice(1), 10);
  if (j >= 0 && j < N) card(j);
}
document.getElementById("mw-q").oninput = function () { page = 0; refresh(); };
document.getElementById("mw-alive").onchange = function () { page = 0; refresh(); };
document.getElementById("mw-prev").onclick = function () { if (page > 0) { page--; draw(); } };
document.getElementById("mw-next").onclick = function () {
  if ((page + 1) * PER < rows.length) { page++; draw(); }
};
window.addEventListener("hashchange", fromHash);
refresh();
fromHash();
})();
"""
