// Runs the dashboard page's own script under node with a minimal DOM, opens the card of one latent, and prints
// what the page shows as JSON: {rows, count, card}. Used by tests/test_sae_latents.py (no browser needed).
"use strict";
const fs = require("fs");
const [, , file, latent] = process.argv;
const html = fs.readFileSync(file, "utf8");
const data = html.match(/<script type='application\/json' id='mw-data'>([\s\S]*?)<\/script>/)[1];
const script = html.match(/<script>([\s\S]*?)<\/script><\/body>/)[1];

class Node {
  constructor(tag) {
    this.tagName = tag;
    this.children = [];
    this.attrs = {};
    this.style = {};
    this.own = "";
    this.className = "";
    this.classList = { add: (c) => { this.className += " " + c; } };
  }
  appendChild(c) { this.children.push(c); return c; }
  set textContent(v) { this.children = []; this.own = String(v); }
  get textContent() { return this.own + this.children.map((c) => c.textContent).join(""); }
  setAttribute(k, v) { this.attrs[k] = v; }
}
const els = {};
for (const id of ["mw-info", "mw-index", "mw-card", "mw-count", "mw-page", "mw-prev", "mw-next"]) els[id] = new Node("div");
els["mw-data"] = { textContent: data };
els["mw-q"] = Object.assign(new Node("input"), { value: "" });
els["mw-alive"] = Object.assign(new Node("input"), { checked: true });
const listeners = {};
global.document = {
  getElementById: (id) => els[id],
  createElement: (t) => new Node(t),
  createElementNS: (ns, t) => new Node(t),
  createTextNode: (t) => { const n = new Node("#text"); n.own = String(t); return n; },
};
global.location = { hash: "#" + latent };
global.window = { addEventListener: (e, f) => { listeners[e] = f; } };
new Function(script)();
const table = els["mw-index"].children[0];
process.stdout.write(JSON.stringify({
  rows: table.children.length - 1,
  count: els["mw-count"].textContent,
  card: els["mw-card"].textContent,
}));
