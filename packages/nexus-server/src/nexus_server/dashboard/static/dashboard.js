// Nexus dashboard: takes over the server-rendered page and keeps it live.
// Live through /ws (snapshot, then deltas); when the WebSocket fails, polls /dashboard/snapshot.
// Every value from the server is put in the page with textContent, never innerHTML.
// The server bounds what it sends (a card's first 20 models, the matrix's first 100 rows, with
// their counts); this script draws exactly that, as the server-rendered page does.
"use strict";
(function () {
  var STATUSES = ["unknown", "healthy", "unhealthy", "loading", "draining"];
  var HISTORY = 100;
  var CHART_POINTS = 150;
  var POINTS_KEPT = 300;
  var POLL_MS = 2000;
  var RETRY_MS = 5000;
  var SVG = "http://www.w3.org/2000/svg";

  var NO_MATRIX = { model_count: 0, rows: [] };

  var state = { backends: [], matrix: NO_MATRIX, history: [], stats: null, health: null, series: {} };
  var socket = null;
  var pollTimer = null;
  var retryTimer = null;

  function $(id) { return document.getElementById(id); }

  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    if (attrs) {
      for (var key in attrs) {
        if (key === "text") node.textContent = attrs[key];
        else node.setAttribute(key, attrs[key]);
      }
    }
    (children || []).forEach(function (child) { if (child) node.appendChild(child); });
    return node;
  }

  function statusOf(value) { return STATUSES.indexOf(value) >= 0 ? value : "unknown"; }

  function ms(value) {
    if (value === null || value === undefined) return "–";
    return value >= 10 ? value.toFixed(0) + " ms" : value.toFixed(1) + " ms";
  }

  function num(value) { return value === null || value === undefined ? "–" : String(value); }

  // 20020 -> "20,020", as the server's f"{n:,}".
  function count(value) {
    if (typeof value !== "number" || !Number.isInteger(value)) return value == null ? "" : String(value);
    return String(value).replace(/\B(?=(\d{3})+(?!\d))/g, ",");
  }

  function text(value) { return document.createTextNode(value); }

  function replace(container, nodes) {
    while (container.firstChild) container.removeChild(container.firstChild);
    nodes.forEach(function (node) { container.appendChild(node); });
  }

  // -- charts ----------------------------------------------------------------------------------

  function chart(label, key, points, unit) {
    var values = points.slice(-CHART_POINTS).map(function (p) { return Number(p[key]) || 0; });
    var top = Math.max.apply(null, values.concat([0])) || 1;
    var step = 120 / Math.max(1, values.length - 1);
    var coords = values.map(function (v, i) {
      return (i * step).toFixed(1) + "," + (27 - (v / top) * 26).toFixed(1);
    }).join(" ");
    var svg = document.createElementNS(SVG, "svg");
    svg.setAttribute("viewBox", "0 0 120 28");
    svg.setAttribute("preserveAspectRatio", "none");
    svg.setAttribute("role", "img");
    var peak = Math.max.apply(null, values.concat([0]));
    svg.setAttribute("aria-label", label + ", last 5 minutes, peak " + peak + unit);
    var line = document.createElementNS(SVG, "polyline");
    line.setAttribute("points", coords);
    svg.appendChild(line);
    var caption = el("figcaption", { text: label + " peak " }, [
      el("b", { text: String(Math.round(peak * 1000) / 1000) + unit }),
    ]);
    return el("figure", { class: "chart chart-" + key }, [caption, svg]);
  }

  // -- sections --------------------------------------------------------------------------------

  function card(b) {
    var status = statusOf(b.status);
    var pending = num(b.pending) + (b.max_concurrent ? " / " + b.max_concurrent : "");
    var models = b.models || [];
    var total = typeof b.model_count === "number" ? b.model_count : models.length;
    var more = total - models.length;
    var points = state.series[b.name] || [];
    function fact(name, value) {
      return el("div", null, [el("dt", { text: name }), el("dd", { text: value })]);
    }
    return el("article", { class: "card", "data-backend": String(b.name) }, [
      el("header", null, [
        el("h3", { text: String(b.name) }),
        el("span", { class: "pill status-" + status, text: status }),
      ]),
      el("dl", { class: "facts" }, [
        fact("Type", num(b.type)), fact("Zone", num(b.zone)),
        fact("Latency", ms(b.latency_ms)), fact("Pending", pending),
      ]),
      b.last_error ? el("p", { class: "error", text: String(b.last_error) }) : null,
      el("div", { class: "charts" }, [
        chart("req/s", "rps", points, ""),
        chart("p95", "p95_ms", points, " ms"),
        chart("errors", "errors", points, ""),
      ]),
      el("p", { class: "models-title", text: count(total) + (total === 1 ? " model" : " models") }),
      el("ul", { class: "models" }, models.map(function (id) { return el("li", { text: String(id) }); })),
      more > 0 ? el("p", { class: "more", text: "and " + count(more) + " more" }) : null,
    ]);
  }

  function renderBackends() {
    var cards = state.backends.map(card);
    if (!cards.length) cards = [el("p", { class: "empty", text: "No backends configured." })];
    replace($("backends"), cards);
    $("backend-count").textContent = String(state.backends.length);
    renderMatrix();
  }

  // The rows the server chose (the first models by name), one column per backend: a Set per row,
  // one lookup per cell.
  function renderMatrix() {
    var matrix = state.matrix || NO_MATRIX;
    var rows = matrix.rows || [];
    $("model-count").textContent = count(matrix.model_count != null ? matrix.model_count : 0);
    if (!rows.length || !state.backends.length) {
      replace($("matrix"), [el("p", { class: "empty", text: "No models yet." })]);
      return;
    }
    var total = typeof matrix.model_count === "number" ? matrix.model_count : rows.length;
    var head = el("tr", null, [el("th", { scope: "col", text: "Model" })].concat(
      state.backends.map(function (b) { return el("th", { scope: "col", text: String(b.name) }); })));
    var body = rows.map(function (row) {
      var serving = new Set(row.backends || []);
      return el("tr", null, [el("th", { scope: "row", text: String(row.model) })].concat(
        state.backends.map(function (b) {
          if (!serving.has(b.name)) return el("td", { class: "cell" });
          var status = statusOf(b.status);
          return el("td", { class: "cell status-" + status }, [
            el("span", { "aria-hidden": "true", text: "●" }),
            el("span", { class: "visually-hidden", text: status }),
          ]);
        })));
    });
    var nodes = [];
    if (total > rows.length) {
      nodes.push(el("p", { class: "more" }, [
        text("The first " + count(rows.length) + " of " + count(total) + " models, by name; all of them in "),
        el("a", { href: "/v1/models", text: "/v1/models" }), text(" and "),
        el("a", { href: "/admin/backends", text: "/admin/backends" }), text("."),
      ]));
    }
    nodes.push(el("table", { class: "matrix" }, [el("thead", null, [head]), el("tbody", null, body)]));
    replace($("matrix"), nodes);
  }

  function historyRow(entry, fresh) {
    var status = entry.status || 0;
    var tokens = "";
    if (entry.prompt_tokens != null || entry.completion_tokens != null) {
      tokens = (entry.prompt_tokens || 0) + "/" + (entry.completion_tokens || 0);
    }
    var failed = status >= 400 || entry.error;
    var time = String(entry.time || "");
    var cls = (failed ? "failed" : "ok") + (fresh ? " new" : "");
    return el("tr", { class: cls, "data-request-id": String(entry.request_id || "") }, [
      el("td", null, [el("time", { datetime: time, text: time.length >= 19 ? time.slice(11, 19) : time })]),
      el("td", { text: num(entry.model) }),
      el("td", { text: entry.backend ? String(entry.backend) : "–" }),
      el("td", { text: String(status) }),
      el("td", { text: ms(entry.duration_ms) }),
      el("td", { text: tokens }),
      el("td", { text: entry.error ? String(entry.error) : "" }),
    ]);
  }

  function renderHistory() {
    var body = $("history").tBodies[0];
    replace(body, state.history.map(function (e) { return historyRow(e, false); }));
    $("request-count").textContent = String(state.history.length);
  }

  function addRequest(entry) {
    state.history.unshift(entry);
    var body = $("history").tBodies[0];
    body.insertBefore(historyRow(entry, true), body.firstChild);
    while (state.history.length > HISTORY) {
      state.history.pop();
      body.removeChild(body.lastChild);
    }
    $("request-count").textContent = String(state.history.length);
  }

  function widget(key, title, value, note) {
    return el("div", { class: "widget", id: "widget-" + key }, [
      el("h3", { text: title }), el("p", { class: "value", text: value }),
      el("p", { class: "note", text: note }),
    ]);
  }

  function renderWidgets() {
    var stats = state.stats || {};
    var requests = stats.requests || {};
    var budget = stats.budget;
    var queue = stats.queue;
    var budgetText = "–", budgetNote = "not configured";
    if (budget) {
      var spent = "$" + Number(budget.spent_usd || 0).toFixed(4);
      budgetText = budget.limit_usd != null ? spent + " of $" + budget.limit_usd : spent + " (no limit)";
      budgetNote = budget.status + " · " + budget.period;
    }
    var queueText = "off", queueNote = "requests are not queued";
    if (queue && queue.enabled) {
      queueText = queue.depth + " / " + queue.max_size;
      queueNote = "max wait " + queue.max_wait_seconds + " s";
    }
    replace($("widgets"), [
      widget("requests", "Requests", String(requests.total || 0), (requests.errors || 0) + " errors"),
      widget("budget", "Budget", budgetText, budgetNote),
      widget("queue", "Queue", queueText, queueNote),
    ]);
    var health = state.health || {};
    var overall = String(health.status || "unknown");
    var pill = $("health");
    pill.className = "pill status-" + ({ healthy: "healthy", degraded: "loading" }[overall] || "unhealthy");
    pill.textContent = overall;
  }

  function setConnection(text) { $("connection").textContent = text; }

  // -- messages --------------------------------------------------------------------------------

  function upsertBackend(event, backend) {
    var index = -1;
    state.backends.forEach(function (b, i) { if (b.name === backend.name) index = i; });
    if (event === "removed") {
      if (index >= 0) state.backends.splice(index, 1);
      delete state.series[backend.name];
    } else if (index >= 0) {
      state.backends[index] = backend;
    } else {
      state.backends.push(backend);
    }
    renderBackends();
  }

  function applySnapshot(message) {
    state.backends = message.backends || [];
    state.matrix = message.matrix || NO_MATRIX;
    state.history = message.history || [];
    state.stats = message.stats || null;
    state.health = message.health || null;
    state.series = message.series || {};
    renderWidgets();
    renderBackends();
    renderHistory();
  }

  function applyStats(message) {
    state.backends = message.backends || state.backends;
    // The matrix rides on a stats message only in the step after it changed.
    if (message.matrix) state.matrix = message.matrix;
    state.stats = message.stats || state.stats;
    state.health = message.health || state.health;
    var points = message.points || {};
    Object.keys(points).forEach(function (name) {
      var list = state.series[name] || (state.series[name] = []);
      var point = points[name];
      if (!list.length || list[list.length - 1].t < point.t) list.push(point);
      if (list.length > POINTS_KEPT) list.splice(0, list.length - POINTS_KEPT);
    });
    renderWidgets();
    renderBackends();
  }

  function handle(message) {
    if (message.type === "snapshot") applySnapshot(message);
    else if (message.type === "backend") upsertBackend(message.event, message.backend);
    else if (message.type === "request") addRequest(message.request);
    else if (message.type === "stats") applyStats(message);
  }

  // -- transport -------------------------------------------------------------------------------

  function now() { return new Date().toLocaleTimeString(); }

  function poll() {
    fetch("/dashboard/snapshot", { cache: "no-store" })
      .then(function (r) { if (!r.ok) throw new Error(r.status); return r.json(); })
      .then(function (snapshot) {
        applySnapshot(snapshot);
        setConnection("polling every " + POLL_MS / 1000 + " s · updated " + now());
      })
      .catch(function () { setConnection("server unreachable · retrying"); });
  }

  function startPolling() {
    if (pollTimer === null) {
      poll();
      pollTimer = setInterval(poll, POLL_MS);
    }
    if (retryTimer === null) {
      retryTimer = setTimeout(function () { retryTimer = null; connect(); }, RETRY_MS);
    }
  }

  function stopPolling() {
    if (pollTimer !== null) { clearInterval(pollTimer); pollTimer = null; }
  }

  function connect() {
    if (!("WebSocket" in window)) { startPolling(); return; }
    var scheme = location.protocol === "https:" ? "wss://" : "ws://";
    var opened = false;
    try {
      socket = new WebSocket(scheme + location.host + "/ws");
    } catch (e) {
      startPolling();
      return;
    }
    socket.onopen = function () {
      opened = true;
      stopPolling();
      setConnection("live");
    };
    socket.onmessage = function (event) {
      try { handle(JSON.parse(event.data)); } catch (e) { /* a bad message must not stop the feed */ }
    };
    socket.onclose = function () {
      socket = null;
      // Dropped after it worked (e.g. too slow): reconnect at once for a fresh snapshot.
      if (opened) { setConnection("reconnecting…"); setTimeout(connect, 250); }
      else startPolling();
    };
  }

  document.documentElement.classList.add("js");
  connect();
})();
