// Nexus dashboard: keeps the server-rendered page live by swapping in fragments the server
// rendered. Each message is {"type": "fragments", "fragments": {id: html}}: the new content of
// the page's element with that id; "history-rows" are rows to put on top of the last requests
// (the table keeps as many as its data-keep says). The server renders (and escapes) all of it;
// this script builds no markup. Live through /ws; when the WebSocket fails, polls
// /dashboard/fragments.
"use strict";
(function () {
  var POLL_MS = 2000;
  var RETRY_MS = 5000;
  var pollTimer = null;
  var retryTimer = null;

  function apply(message) {
    if (!message || message.type !== "fragments") return;
    var fragments = message.fragments || {};
    Object.keys(fragments).forEach(function (id) {
      if (id === "history-rows") {
        var table = document.getElementById("history");
        var rows = table.tBodies[0];
        rows.insertAdjacentHTML("afterbegin", fragments[id]);
        while (rows.rows.length > Number(table.dataset.keep)) rows.deleteRow(-1);
        return;
      }
      var target = document.getElementById(id);
      if (target) target.innerHTML = fragments[id];
    });
  }

  function setConnection(text) { document.getElementById("connection").textContent = text; }

  function now() { return new Date().toLocaleTimeString(); }

  function poll() {
    fetch("/dashboard/fragments", { cache: "no-store" })
      .then(function (r) { if (!r.ok) throw new Error(r.status); return r.json(); })
      .then(function (message) {
        apply(message);
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
    var socket;
    try {
      socket = new WebSocket(scheme + location.host + "/ws");
    } catch (e) {
      startPolling();
      return;
    }
    socket.onopen = function () { opened = true; stopPolling(); };
    socket.onmessage = function (event) {
      try { apply(JSON.parse(event.data)); } catch (e) { /* a bad message must not stop the feed */ }
      // "live" once the page shows the server's current fragments (the first message has all).
      setConnection("live");
    };
    socket.onclose = function () {
      // Dropped after it worked (e.g. too slow): reconnect at once for every fragment again.
      if (opened) { setConnection("reconnecting…"); setTimeout(connect, 250); }
      else startPolling();
    };
  }

  connect();
})();
