// packdist dashboard: progressive enhancement. The page is complete without this script (it
// refreshes itself every 10 s in a <noscript>); with it, the live part is re-rendered from the
// JSON API every 1.5 s, and the header says when the data is stale.
(function () {
  "use strict";
  function counted(n, one) { return n + " " + one + (n === 1 ? "" : "s"); }
  // The job page's cancel and retry buttons (shown to operators and admins only): a POST
  // with the header the site requires of a write carried by the session cookie.
  document.addEventListener("click", function (ev) {
    var btn = ev.target && ev.target.closest ? ev.target.closest("button[data-post]") : null;
    if (!btn) { return; }
    var question = btn.getAttribute("data-confirm");
    if (question && !window.confirm(question)) { return; }
    var out = btn.parentNode.querySelector(".action-result");
    btn.disabled = true;
    var request = {
      method: "POST", credentials: "same-origin", cache: "no-store",
      headers: { "Accept": "application/json", "X-Packdist-Action": "1" }
    };
    if (btn.getAttribute("data-form")) {  // a package's form: the targets as JSON
      var form = btn.closest("form");
      var target = form.elements.target.value;
      var body = target === "all" ? { all: true }
        : target === "to" ? { to: form.elements.servers.value.split(",") }
        : { group: target.slice(6) };
      request.headers["Content-Type"] = "application/json";
      request.body = JSON.stringify(body);
    }
    fetch(btn.getAttribute("data-post"), request)
      .then(function (resp) {
        return resp.json().then(function (doc) { return { status: resp.status, doc: doc }; });
      })
      .then(function (r) {
        var d = r.doc;
        if (r.status === 200) {
          out.textContent = "message" in d ? d.message
            : "cancelled" in d ? counted(d.cancelled, "instruction") + " cancelled by " + d.by
            : counted(d.queued, "instruction") + " queued again by " + d.by;
        } else {
          out.textContent = d.error || "the site answered " + r.status;
        }
      })
      .catch(function (err) { out.textContent = "not done: " + (err && err.message ? err.message : "site unreachable"); })
      .then(function () { btn.disabled = false; });
  });
  var live = document.getElementById("live");
  var conn = document.getElementById("conn");
  if (!live || !conn) { return; }
  var src = live.getAttribute("data-src");
  var last = null;
  var lastOk = null;
  var failures = 0;

  function say(text, cls) {
    conn.textContent = text;
    conn.className = "conn " + cls;
  }

  function tick() {
    fetch(src, { credentials: "same-origin", cache: "no-store", headers: { "Accept": "application/json" } })
      .then(function (resp) {
        if (resp.status === 401) {
          window.location.assign("/login?next=" + encodeURIComponent(window.location.pathname));
          throw new Error("logged out");
        }
        if (!resp.ok) { throw new Error("the site answered " + resp.status); }
        return resp.json();
      })
      .then(function (doc) {
        if (doc.html !== last) {
          live.innerHTML = doc.html;  // rendered and escaped by the site
          last = doc.html;
        }
        lastOk = new Date();
        failures = 0;
        say("live · updated " + lastOk.toLocaleTimeString(), "ok");
      })
      .catch(function (err) {
        failures += 1;
        var since = lastOk ? " since " + lastOk.toLocaleTimeString() : "";
        say("not updating" + since + ": " + (err && err.message ? err.message : "site unreachable"), "lost");
      })
      .then(function () {
        window.setTimeout(tick, failures ? Math.min(10000, 1500 * (failures + 1)) : 1500);
      });
  }

  function swap(html) {
    if (html !== last) {
      live.innerHTML = html;  // rendered and escaped by the site
      last = html;
    }
    lastOk = new Date();
    say("live · updated " + lastOk.toLocaleTimeString(), "ok");
  }

  // Pushed: the site sends the page's live part when it changes (server-sent events). The
  // browser reconnects by itself after a cut; where the stream cannot be had (no
  // EventSource, the site turned it away, logged out), the page asks every 1.5 s instead.
  function stream() {
    var es = new window.EventSource("/api/live?src=" + encodeURIComponent(src));
    var opened = false;
    es.onopen = function () { opened = true; };
    es.onmessage = function (ev) { swap(JSON.parse(ev.data)); };
    es.addEventListener("gone", function () { es.close(); window.setTimeout(tick, 0); });
    es.onerror = function () {
      if (!opened || es.readyState === window.EventSource.CLOSED) {
        es.close();  // never opened (refused, 401, 503): ask instead, which says why
        window.setTimeout(tick, 1500);
        return;
      }
      var since = lastOk ? " since " + lastOk.toLocaleTimeString() : "";
      say("not updating" + since + ": reconnecting", "lost");
    };
  }

  say("live", "ok");
  if (window.EventSource) { stream(); } else { window.setTimeout(tick, 1500); }
})();
