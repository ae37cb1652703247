// shoal dashboard: keeps a server-rendered page current without reloading it.
//
// - Follows the planner's event stream (GET /api/events/stream, Server-Sent Events) for the
//   records the page names on <body> (data-stream, data-types), from the log sequence the
//   page was read at (data-after), so nothing between the read and the stream is missed.
// - At each record, reloads the parts of the page that show state (elements with data-live,
//   whose value is the URL of their fresh HTML), at most a few times a second, keeping the
//   keyboard focus where it was; and every data-poll seconds anyway.
// - Appends a followed task's output lines (TaskOutput records) to the list #log.
// - Sends the buttons with data-url (cancel, drain, resume) as POSTs to the API with the
//   session's CSRF token (<meta name="csrf-token">), after a confirmation if they ask.
//
// Hand-written, no build step, no library. Text from records is only ever set as text.
(function () {
  "use strict";

  var body = document.body;
  var csrfMeta = document.querySelector('meta[name="csrf-token"]');
  var csrf = csrfMeta ? csrfMeta.getAttribute("content") : "";
  var liveStatus = document.getElementById("live-status");
  var lastSeq = Number(body.dataset.after || 0);
  var source = null;

  function setStatus(state, text) {
    if (!liveStatus) return;
    liveStatus.dataset.state = state;
    liveStatus.textContent = text;
  }

  function toast(text, bad) {
    var t = document.getElementById("toast");
    if (!t) return;
    t.textContent = text;
    t.className = bad ? "toast bad" : "toast";
    t.hidden = false;
    clearTimeout(toast.timer);
    toast.timer = setTimeout(function () { t.hidden = true; }, bad ? 12000 : 5000);
  }

  function sessionEnded() {
    if (source) source.close();
    setStatus("ended", "session ended");
    var next = encodeURIComponent(location.pathname + location.search);
    var t = document.getElementById("toast");
    if (t) {
      t.textContent = "";
      t.append("Your session has ended. ");
      var a = document.createElement("a");
      a.href = "/login?next=" + next;
      a.textContent = "Log in again";
      t.append(a);
      t.className = "toast bad";
      t.hidden = false;
    }
  }

  // ---- live parts -------------------------------------------------------------------------

  var refreshing = false;
  var again = false;
  var timer = null;

  function scheduleRefresh() {
    if (timer) return;
    timer = setTimeout(function () {
      timer = null;
      refresh();
    }, 150);
  }

  function refresh() {
    if (refreshing) { again = true; return; }
    var parts = Array.prototype.slice.call(document.querySelectorAll("[data-live]"));
    if (parts.length === 0) return;
    refreshing = true;
    Promise.all(parts.map(refreshPart)).then(done, done);
    function done() {
      refreshing = false;
      if (again) { again = false; scheduleRefresh(); }
    }
  }

  function refreshPart(el) {
    return fetch(el.dataset.live, {
      credentials: "same-origin",
      headers: { "Accept": "text/html" },
      cache: "no-store",
      redirect: "manual"
    }).then(function (res) {
      if (res.status === 401 || res.type === "opaqueredirect") { sessionEnded(); return; }
      if (!res.ok) return;
      return res.text().then(function (html) { swap(el, html); });
    });
  }

  // Replaces a part's content, keeping the focused element (by id) and the scroll position.
  function swap(el, html) {
    if (el.innerHTML === html) return;
    var active = document.activeElement;
    var focusId = active && el.contains(active) ? active.id : "";
    el.innerHTML = html;
    if (focusId) {
      var target = document.getElementById(focusId);
      if (target) target.focus({ preventScroll: true });
    }
  }

  // ---- a task's output --------------------------------------------------------------------

  // A cursor "attempt.run.line" as numbers.
  function parseCursor(text) {
    if (!text) return null;
    var p = text.split(".").map(Number);
    return p.length === 3 ? p : null;
  }

  function after(a, b) {
    for (var i = 0; i < 3; i++) {
      if (a[i] !== b[i]) return a[i] > b[i];
    }
    return false;
  }

  function appendOutput(d) {
    var log = document.getElementById("log");
    if (!log || log.dataset.task !== d.task) return;
    var cursor = parseCursor(log.dataset.next);
    var atBottom = log.scrollHeight - log.scrollTop - log.clientHeight < 24;
    var run = d.delivery || 1;
    var lastSep = log.dataset.run || (cursor ? cursor[0] + "." + cursor[1] : "");
    var added = false;
    (d.lines || []).forEach(function (line, i) {
      var pos = [d.attempt, run, d.first_line + i];
      if (cursor && !after(pos, cursor)) return;
      var key = d.attempt + "." + run;
      if (key !== lastSep) {
        var sep = document.createElement("li");
        sep.className = "sep";
        sep.textContent = "attempt " + d.attempt + (run > 1 ? ", run " + run : "");
        log.appendChild(sep);
        lastSep = key;
      }
      var li = document.createElement("li");
      var err = line.stream === "stderr";
      li.className = "line " + (err ? "err" : "out");
      var s = document.createElement("span");
      s.className = "stream";
      s.textContent = err ? "err" : "out";
      var t = document.createElement("span");
      t.className = "text";
      t.textContent = line.line;
      li.appendChild(s);
      li.appendChild(t);
      log.appendChild(li);
      cursor = pos;
      added = true;
    });
    if (!added) return;
    log.dataset.next = cursor.join(".");
    log.dataset.run = lastSep;
    var none = document.getElementById("no-output");
    if (none) none.remove();
    if (atBottom) log.scrollTop = log.scrollHeight;
  }

  // ---- the event stream -------------------------------------------------------------------

  function follow() {
    var types = body.dataset.types;
    if (!types || !window.EventSource) return;
    var q = ["type=" + encodeURIComponent(types), "after=" + lastSeq];
    if (body.dataset.stream) q.push("stream=" + encodeURIComponent(body.dataset.stream));
    source = new EventSource("/api/events/stream?" + q.join("&"));
    source.onopen = function () { setStatus("live", "live"); };
    source.onerror = function () {
      if (source.readyState === EventSource.CLOSED) {
        // Refused (the session ended?) rather than cut: ask, then start again from the last
        // record seen.
        setStatus("reconnecting", "reconnecting…");
        fetch("/api/status", { credentials: "same-origin" }).then(function (res) {
          if (res.status === 401) { sessionEnded(); return; }
          setTimeout(follow, 3000);
        }, function () { setTimeout(follow, 3000); });
      } else {
        setStatus("reconnecting", "reconnecting…");
      }
    };
    types.split(",").forEach(function (type) {
      source.addEventListener(type, onRecord);
    });
  }

  function onRecord(e) {
    var record;
    try { record = JSON.parse(e.data); } catch (_) { return; }
    if (record.seq > lastSeq) lastSeq = record.seq;
    if (record.type === "TaskOutput") {
      appendOutput(record.data);
    } else {
      scheduleRefresh();
    }
  }

  // ---- buttons that change something ------------------------------------------------------

  document.addEventListener("click", function (e) {
    var button = e.target.closest ? e.target.closest("button[data-url]") : null;
    if (!button) return;
    e.preventDefault();
    if (button.dataset.confirm && !window.confirm(button.dataset.confirm)) return;
    button.disabled = true;
    fetch(button.dataset.url, {
      method: "POST",
      credentials: "same-origin",
      headers: { "X-CSRF-Token": csrf }
    }).then(function (res) {
      if (res.ok) {
        toast(button.dataset.done || "Done", false);
        scheduleRefresh();
        return;
      }
      if (res.status === 401) { sessionEnded(); return; }
      return res.json().then(function (b) {
        toast(b.error || ("Refused: HTTP " + res.status), true);
      }, function () { toast("Refused: HTTP " + res.status, true); });
    }, function () {
      toast("The planner did not answer; try again.", true);
    }).then(function () { button.disabled = false; });
  });

  // A page the browser keeps for its back button must not keep its stream open: browsers
  // allow a few connections per host, and every stream of a kept page holds one.
  window.addEventListener("pagehide", function () {
    if (source) { source.close(); source = null; }
  });
  window.addEventListener("pageshow", function (e) {
    if (e.persisted) { follow(); scheduleRefresh(); }
  });

  var poll = Number(body.dataset.poll || 0);
  if (poll > 0) setInterval(scheduleRefresh, poll * 1000);
  var log = document.getElementById("log");
  if (log) log.scrollTop = log.scrollHeight;
  follow();
})();
