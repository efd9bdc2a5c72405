// The offsim dashboard: a snapshot from the JSON API, then live events over SSE.
//
// Events move the page at once; the snapshot, fetched again every few seconds, keeps the counts
// right (events missed while disconnected, or published before the page opened). Transitions
// only move forward: a late or repeated event never sends an order back.
"use strict";

const STATUSES = ["pending", "shipped", "completed", "cancelled"];
// Completed and cancelled are both terminal; a cancelled order comes straight from pending.
const RANK = { pending: 0, shipped: 1, completed: 2, cancelled: 2 };
const BEFORE = { shipped: "pending", completed: "shipped", cancelled: "pending" };
const REFRESH_MS = 5000;
const MAX_ORDERS = 12;
const MAX_TRANSITIONS = 14;
const MAX_KNOWN = 5000;
const SSD_COUNT = 4;
const MINUTES = 15;

const state = {
  summary: null,
  orders: new Map(), // id -> order, the statuses this page knows
  transitions: new Map(), // "id:status" -> transition
  series: [],
  ssdsJson: "",
  failedImages: new Set(),
};

// --- small helpers ------------------------------------------------------------------------------

function el(tag, props, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (value === null || value === undefined) continue;
    if (key === "class") node.className = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key in node && typeof value !== "string") node[key] = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

const SVG_NS = "http://www.w3.org/2000/svg";
function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, value);
  if (text !== undefined) node.textContent = text;
  return node;
}

const fmt = (n) => Number(n).toLocaleString("en");
const clock = (iso) =>
  new Date(iso).toLocaleTimeString("en-GB", { hour: "2-digit", minute: "2-digit", second: "2-digit" });
const hhmm = (iso) => new Date(iso).toLocaleTimeString("en-GB", { hour: "2-digit", minute: "2-digit" });
function duration(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  if (seconds < 90) return `${seconds.toFixed(1)} s`;
  if (seconds < 5400) return `${(seconds / 60).toFixed(1)} min`;
  return `${(seconds / 3600).toFixed(1)} h`;
}
const productLabel = (o) => o.product_name || o.barcode;
// A share of 0..1 as a percentage; none (nothing wanted yet) is not 0 %.
const percent = (share) => (share === null || share === undefined ? "–" : `${(100 * share).toFixed(1)} %`);
const setText = (id, value) => (document.getElementById(id).textContent = value);

function setCount(id, value) {
  const node = document.getElementById(id);
  const text = fmt(value);
  if (node.textContent === text) return;
  const rose = Number(node.textContent.replace(/,/g, "")) < value;
  node.textContent = text;
  if (rose) {
    node.classList.remove("bump");
    void node.offsetWidth; // restart the animation
    node.classList.add("bump");
  }
}

async function getJSON(url) {
  const response = await fetch(url, { cache: "no-store" });
  if (!response.ok) throw new Error(`${url}: HTTP ${response.status}`);
  return response.json();
}

// --- counts -------------------------------------------------------------------------------------

function renderCounts() {
  const s = state.summary;
  if (!s) return;
  setCount("count-users", s.users);
  setCount("count-ssds", s.ssds);
  setCount("count-products", s.products);
  setCount("count-orders", s.orders.total);
  for (const status of STATUSES) setCount(`count-${status}`, s.orders[status]);
}

function renderStageTimes() {
  const times = state.summary && state.summary.stage_seconds;
  if (!times) return;
  for (const status of STATUSES) {
    const node = document.getElementById(`avg-${status}`);
    if (node) node.textContent = duration(times[status]);
  }
}

// The SSDs' readings and the demand that found no stock: from the snapshot only (no event
// carries them), so they move every few seconds.
function renderDemand() {
  const d = state.summary && state.summary.demand;
  if (!d) return;
  setText("readings-rate", d.readings_per_second.toLocaleString("en", { minimumFractionDigits: 1, maximumFractionDigits: 1 }));
  setText("short-share", percent(d.short_share));
  setText("short-share-minute", percent(d.last_minute.short_share));
  setText("readings-total", fmt(d.lifetime.readings));
  setText("units-wanted", fmt(d.lifetime.units_wanted));
  setText("units-short", fmt(d.lifetime.units_short));
}

// --- orders and transitions ---------------------------------------------------------------------

function remember(order) {
  state.orders.set(order.id, order);
  if (state.orders.size > MAX_KNOWN) {
    const oldest = Math.min(...state.orders.keys());
    state.orders.delete(oldest);
  }
}

function addTransition(t) {
  state.transitions.set(`${t.id}:${t.status}`, t);
  if (state.transitions.size > MAX_TRANSITIONS * 4) {
    const keep = newestTransitions(MAX_TRANSITIONS * 2);
    state.transitions = new Map(keep.map((x) => [`${x.id}:${x.status}`, x]));
  }
}

function newestTransitions(n) {
  return [...state.transitions.values()]
    .sort((a, b) => Date.parse(b.at) - Date.parse(a.at) || b.id - a.id || RANK[b.status] - RANK[a.status])
    .slice(0, n);
}

// A live event: move the order forward, adjust the counts, log the transition.
function applyOrder(event) {
  const known = state.orders.get(event.id);
  if (known && RANK[event.status] <= RANK[known.status]) return; // repeated or late
  const counts = state.summary && state.summary.orders;
  if (counts) {
    // An order the page has not seen came from the stage before this one.
    const before = known ? known.status : BEFORE[event.status];
    if (before) counts[before] = Math.max(0, counts[before] - 1);
    else counts.total += 1;
    counts[event.status] += 1;
  }
  remember({
    ...(known || {}),
    id: event.id,
    ssd_id: event.ssd_id,
    barcode: event.barcode,
    product_name: event.product_name || (known && known.product_name),
    quantity: event.quantity,
    status: event.status,
    fresh: true,
  });
  addTransition({
    id: event.id,
    ssd_id: event.ssd_id,
    barcode: event.barcode,
    product_name: event.product_name,
    quantity: event.quantity,
    status: event.status,
    at: event.timestamp,
  });
  bumpThroughput(event);
  scheduleRender();
  if (event.status === "completed") refreshSsdsSoon();
}

// Many events in a burst make one repaint, not one each.
let renderPending = false;
function scheduleRender() {
  if (renderPending) return;
  renderPending = true;
  requestAnimationFrame(() => {
    renderPending = false;
    renderCounts();
    renderOrders();
    renderTransitions();
    renderThroughput();
  });
}

function applyUser(event) {
  if (!state.summary) return;
  state.summary.users += 1;
  state.summary.ssds += event.devices;
  scheduleRender();
  refreshSsdsSoon();
}

// The snapshot: orders take the furthest status either side knows.
function mergeRecent(recent) {
  for (const order of recent.orders) {
    const known = state.orders.get(order.id);
    if (known && RANK[known.status] > RANK[order.status]) order.status = known.status;
    remember({ ...order, fresh: known ? known.fresh : false });
  }
  for (const t of recent.transitions) addTransition(t);
}

function renderOrders() {
  const body = document.querySelector("#orders tbody");
  const newest = [...state.orders.values()].sort((a, b) => b.id - a.id).slice(0, MAX_ORDERS);
  const rows = newest.map((o) => {
    const row = el(
      "tr",
      { id: `order-${o.id}`, dataset: { status: o.status }, class: o.fresh ? "fresh" : "" },
      el("td", { class: "num" }, `#${o.id}`),
      el("td", { class: "product", title: productLabel(o) }, productLabel(o)),
      el("td", {}, `SSD ${o.ssd_id}`),
      el("td", { class: "num" }, o.quantity),
      el("td", { class: "status" }, el("span", { class: "badge", dataset: { status: o.status } }, o.status)),
    );
    o.fresh = false;
    return row;
  });
  body.replaceChildren(...rows);
  document.getElementById("orders-empty").hidden = rows.length > 0;
}

const VERB = { pending: "placed", shipped: "shipped", completed: "delivered", cancelled: "rejected by the supplier" };

function renderTransitions() {
  const items = newestTransitions(MAX_TRANSITIONS).map((t) =>
    el(
      "li",
      { dataset: { order: t.id, status: t.status } },
      el("span", { class: "time" }, clock(t.at)),
      el("span", { class: "badge", dataset: { status: t.status } }, t.status),
      el(
        "span",
        { class: "what", title: `${productLabel(t)} (${t.barcode})` },
        `#${t.id} ${VERB[t.status]}: ${t.quantity} × ${productLabel(t)} · SSD ${t.ssd_id}`,
      ),
    ),
  );
  document.getElementById("transitions").replaceChildren(...items);
  document.getElementById("transitions-empty").hidden = items.length > 0;
}

// --- throughput chart ---------------------------------------------------------------------------

function bumpThroughput(event) {
  if (event.status === "shipped" || event.status === "cancelled") return;
  const last = state.series[state.series.length - 1];
  if (!last) return;
  const minute = new Date(event.timestamp);
  minute.setSeconds(0, 0);
  if (Date.parse(last.minute) !== minute.getTime()) return; // the next snapshot brings the new minute
  if (event.status === "pending") last.placed += 1;
  else last.completed += 1;
}

function renderThroughput() {
  const chart = document.getElementById("throughput");
  const series = state.series;
  const W = 600, H = 170, left = 30, right = 6, top = 10, bottom = 22;
  const plotW = W - left - right, plotH = H - top - bottom;
  const peak = Math.max(1, ...series.map((m) => Math.max(m.placed, m.completed)));
  const slot = plotW / Math.max(1, series.length);
  const barW = Math.max(2, slot / 2 - 2);
  const y = (v) => top + plotH - (v / peak) * plotH;
  const nodes = [
    svg("line", { class: "axis", x1: left, x2: W - right, y1: top + plotH, y2: top + plotH }),
    svg("line", { class: "axis", x1: left, x2: W - right, y1: top, y2: top }),
    svg("text", { x: left - 6, y: top + 4, "text-anchor": "end" }, fmt(peak)),
    svg("text", { x: left - 6, y: top + plotH + 4, "text-anchor": "end" }, "0"),
  ];
  series.forEach((m, i) => {
    const x = left + i * slot + 1;
    const title = `${hhmm(m.minute)}: ${m.placed} placed, ${m.completed} completed`;
    const placed = svg("rect", { class: "placed", x, y: y(m.placed), width: barW, height: top + plotH - y(m.placed) });
    const done = svg("rect", {
      class: "completed",
      x: x + barW + 1,
      y: y(m.completed),
      width: barW,
      height: top + plotH - y(m.completed),
    });
    placed.append(svg("title", {}, title));
    done.append(svg("title", {}, title));
    nodes.push(placed, done);
    const every = Math.ceil(series.length / 5);
    if ((series.length - 1 - i) % every === 0) {
      nodes.push(svg("text", { x: x + barW, y: H - 6, "text-anchor": "middle" }, hhmm(m.minute)));
    }
  });
  chart.replaceChildren(...nodes);
  document.getElementById("tp-placed").textContent = fmt(series.reduce((n, m) => n + m.placed, 0));
  document.getElementById("tp-completed").textContent = fmt(series.reduce((n, m) => n + m.completed, 0));
}

// --- SSDs ---------------------------------------------------------------------------------------

function thumbnail(item) {
  const placeholder = () =>
    el("div", { class: "thumb placeholder", title: "no image" }, (item.name || "?").trim().charAt(0).toUpperCase());
  const url = item.image_url;
  if (!url || !/^https?:\/\//i.test(url) || state.failedImages.has(url)) return placeholder();
  const img = el("img", {
    class: "thumb",
    src: url,
    alt: item.name,
    loading: "lazy",
    referrerpolicy: "no-referrer",
  });
  // Offline, or an image OFF no longer has: the placeholder stands in, the page goes on.
  img.addEventListener("error", () => {
    state.failedImages.add(url);
    img.replaceWith(placeholder());
  });
  return img;
}

function stockRow(item) {
  const fill = Math.min(100, (100 * item.quantity) / item.capacity);
  const mark = Math.min(100, (100 * item.reorder_point) / item.capacity);
  return el(
    "div",
    { class: "stock", dataset: { barcode: item.barcode, low: item.below_reorder_point } },
    thumbnail(item),
    el(
      "div",
      { class: "name", title: [item.name, item.package, item.barcode].filter(Boolean).join(" · ") },
      el("span", { class: "text" }, item.name),
      item.on_order ? el("span", { class: "badge", dataset: { status: item.on_order } }, item.on_order) : null,
      item.units_short > 0
        ? el(
            "span",
            { class: "short", title: `${fmt(item.units_short)} of the ${fmt(item.units_wanted)} units wanted found no stock` },
            `${fmt(item.units_short)} short`,
          )
        : null,
    ),
    el(
      "div",
      { class: "level" },
      el(
        "div",
        { class: item.below_reorder_point ? "bar low" : "bar", title: `reorder point ${item.reorder_point}` },
        el("div", { class: "fill", style: `width: ${fill}%` }),
        el("div", { class: "reorder", style: `left: ${mark}%` }),
      ),
      el("span", { class: "qty" }, `${item.quantity} / ${item.capacity} · reorder at ${item.reorder_point}`),
    ),
  );
}

function renderSsds(data) {
  const json = JSON.stringify(data.ssds);
  if (json === state.ssdsJson) return; // unchanged: keep the images as they are
  state.ssdsJson = json;
  const cards = data.ssds.map((ssd) =>
    el(
      "article",
      { class: "ssd", id: `ssd-${ssd.id}` },
      el("h3", {}, `SSD ${ssd.id}`, el("small", {}, `${ssd.owner} · ${ssd.mac_address}`)),
      ...ssd.stock.map(stockRow),
    ),
  );
  document.getElementById("ssds").replaceChildren(...cards);
  document.getElementById("ssds-empty").hidden = cards.length > 0;
}

let ssdTimer = null;
function refreshSsdsSoon() {
  // Stock changes when the users service has handled the event: look a moment later, once.
  if (ssdTimer) return;
  ssdTimer = setTimeout(async () => {
    ssdTimer = null;
    try {
      renderSsds(await getJSON(`/api/ssds?limit=${SSD_COUNT}`));
    } catch (err) {
      console.warn(err);
    }
  }, 1000);
}

// --- services -----------------------------------------------------------------------------------

function renderServices(data) {
  const items = data.services.map((s) =>
    el("li", { dataset: { status: s.status }, title: `${s.url}: ${s.status}` }, s.name),
  );
  document.getElementById("services").replaceChildren(...items);
}

// --- KPIs ---------------------------------------------------------------------------------------

// A KPI with nothing measured yet is null: shown as a dash, never as 0 or 100 %.
function renderKpis(kpis) {
  for (const [name, value] of Object.entries(kpis)) {
    const cell = document.getElementById(`kpi-${name}`);
    if (!cell) continue;
    if (name.endsWith("_share") || name === "fill_rate") cell.textContent = percent(value);
    else if (name.endsWith("_s")) cell.textContent = duration(value);
    else cell.textContent = value === null ? "–" : value.toFixed(2);
  }
}

// --- snapshot and events ------------------------------------------------------------------------

async function refresh() {
  const [summary, recent, ssds, throughput, services, kpis] = await Promise.allSettled([
    getJSON("/api/summary"),
    getJSON(`/api/recent?limit=${MAX_ORDERS}`),
    getJSON(`/api/ssds?limit=${SSD_COUNT}`),
    getJSON(`/api/throughput?minutes=${MINUTES}`),
    getJSON("/api/services"),
    getJSON("/api/kpis"),
  ]);
  if (summary.status === "fulfilled") {
    state.summary = summary.value;
    renderCounts();
    renderStageTimes();
    renderDemand();
    document.getElementById("updated").textContent = `updated ${clock(summary.value.at)}`;
  }
  if (recent.status === "fulfilled") {
    mergeRecent(recent.value);
    renderOrders();
    renderTransitions();
  }
  if (ssds.status === "fulfilled") renderSsds(ssds.value);
  if (throughput.status === "fulfilled") {
    state.series = throughput.value.series;
    document.getElementById("tp-minutes").textContent = throughput.value.minutes;
    renderThroughput();
  }
  if (services.status === "fulfilled") renderServices(services.value);
  if (kpis.status === "fulfilled") renderKpis(kpis.value.kpis);
  for (const failed of [summary, recent, ssds, throughput, services, kpis]) {
    if (failed.status === "rejected") console.warn(failed.reason);
  }
}

function connect() {
  const live = document.getElementById("live");
  const source = new EventSource("/api/events");
  source.addEventListener("open", () => {
    live.dataset.state = "live";
    live.textContent = "live";
    refresh(); // whatever happened while the stream was down
  });
  source.addEventListener("error", () => {
    live.dataset.state = "reconnecting";
    live.textContent = "reconnecting";
  });
  source.addEventListener("order", (e) => applyOrder(JSON.parse(e.data)));
  source.addEventListener("user", (e) => applyUser(JSON.parse(e.data)));
}

// --- the generator: its phase and rate, and a few controls (through the dashboard's proxy) ---

const GENERATOR_MS = 2000;
// The controls and where each sits in the generator's PUT /api/control body.
const CONTROLS = [
  ["register_rate", null],
  ["random_order_rate", null],
  ["consumption", null],
  ["reject", "faults"],
  ["supplier_delay", "faults"],
  ["courier_spike", "faults"],
  ["malformed", "faults"],
];

function renderGenerator(g) {
  const panel = document.getElementById("generator");
  panel.dataset.state = g ? (g.paused ? "paused" : "running") : "unreachable";
  const text = (id, value) => (document.getElementById(id).textContent = value);
  if (!g) {
    text("gen-phase", "generator unreachable");
    return;
  }
  text("gen-phase", `${g.scenario} · ${g.phase}`);
  text("gen-rate", `${g.event_rate.toFixed(1)}`);
  text("gen-ssds", fmt(g.ssds));
  text("gen-inflight", `${g.in_flight}/${g.max_in_flight}`);
  document.getElementById("gen-pause").textContent = g.paused ? "Resume" : "Pause";
  for (const [name, group] of CONTROLS) {
    const input = document.getElementById(`gen-${name}`);
    if (document.activeElement === input) continue; // not under the person's cursor
    input.value = group ? g.faults[name] : g.rates[name];
  }
}

async function refreshGenerator() {
  try {
    renderGenerator(await getJSON("/api/generator"));
  } catch (err) {
    renderGenerator(null);
  }
}

// Changes need a control token (Authorization: Bearer): asked for at the first change, kept in
// sessionStorage (this tab only, gone when it closes), forgotten when the dashboard refuses it.
const TOKEN_KEY = "offsim.controlToken";
let pendingChange = null; // the change that waits for a token

function askToken(message) {
  document.getElementById("gen-auth").hidden = false;
  setText("gen-status", message);
  document.getElementById("gen-token").focus();
}

async function putGenerator(body) {
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (!token) {
    pendingChange = body;
    askToken("a control token is needed to change the generator");
    return;
  }
  let response;
  try {
    response = await fetch("/api/generator", {
      method: "PUT",
      headers: { "Content-Type": "application/json", Authorization: `Bearer ${token}` },
      body: JSON.stringify(body),
    });
  } catch (err) {
    setText("gen-status", `not sent: ${err.message}`);
    return;
  }
  const answer = await response.json().catch(() => ({}));
  if (response.status === 401) {
    sessionStorage.removeItem(TOKEN_KEY);
    pendingChange = body;
    askToken(`token refused (${answer.message || "401"}): enter it again`);
  } else if (response.ok) {
    setText("gen-status", "applied");
    renderGenerator(answer);
  } else {
    const details = Object.entries(answer.details || {}).map(([k, v]) => `${k}: ${v}`);
    setText("gen-status", `refused: ${details.join("; ") || answer.message || response.status}`);
  }
}

function useToken(e) {
  e.preventDefault();
  const input = document.getElementById("gen-token");
  const token = input.value.trim();
  if (!token) return;
  sessionStorage.setItem(TOKEN_KEY, token);
  input.value = "";
  document.getElementById("gen-auth").hidden = true;
  const body = pendingChange;
  pendingChange = null;
  if (body) putGenerator(body);
}

function setupGenerator() {
  document.getElementById("gen-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const body = { faults: {} };
    for (const [name, group] of CONTROLS) {
      const value = document.getElementById(`gen-${name}`).value;
      if (value === "") continue;
      (group ? body.faults : body)[name] = Number(value);
    }
    putGenerator(body);
  });
  document.getElementById("gen-pause").addEventListener("click", () => {
    putGenerator({ paused: document.getElementById("generator").dataset.state !== "paused" });
  });
  document.getElementById("gen-auth").addEventListener("submit", useToken);
  document.getElementById("gen-reset").addEventListener("click", () => {
    const body = { faults: {} };
    for (const [name, group] of CONTROLS) (group ? body.faults : body)[name] = null;
    putGenerator(body);
  });
  refreshGenerator();
  setInterval(refreshGenerator, GENERATOR_MS);
}

document.addEventListener("DOMContentLoaded", () => {
  refresh();
  connect();
  setupGenerator();
  setInterval(refresh, REFRESH_MS);
});
