// packdist dashboard: progressive enhancement. The page is complete without this script (it
// refreshes itself every 10 s in a <noscript>); with it, the live part is re-rendered from the
// JSON API every 1.5 s, and the header says when the data is stale.
(function () {
  "use strict";
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

  say("live", "ok");
  window.setTimeout(tick, 1500);
})();
