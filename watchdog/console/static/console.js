// gl-watchdog incident console: while an incident is live, listen to its server-sent events and,
// on each one (something changed), fetch the page again and replace its live part. The stream
// reconnects with a growing delay; only where it keeps failing (or the browser has no EventSource)
// does the page fall back to a slow poll of its version. Without JavaScript the page has a Reload link.
(function () {
  "use strict";
  var RETRY_MS = [1000, 2000, 5000, 10000, 30000];  // the delays before each reconnect, then the last
  var FAILURES_BEFORE_POLL = 6;  // failed connections in a row (none opened) before the slow poll
  var POLL_MS = 30000;
  var NOTICE_MS = 8000;  // how long a form's notice stays at least
  var loaded = Date.now();
  var status = document.getElementById("refresh-status");
  if (!status || status.dataset.live !== "true" || !window.fetch) { return; }
  var after = status.dataset.after;
  var failures = 0;
  var fetching = false;
  var again = false;

  function say(live) {
    var time = new Date().toLocaleTimeString();
    status.textContent = live
      ? "Updated at " + time + "; this page updates itself while the incident is live."
      : "Updated at " + time + "; this incident is settled.";
  }

  // The notice a form left spoke of the page as it was: it goes once the page has changed, but not
  // before it could be read.
  function dropNotice() {
    var wait = NOTICE_MS - (Date.now() - loaded);
    if (wait > 0) { window.setTimeout(dropNotice, wait); return; }
    var notice = document.getElementById("notice");
    if (notice) { notice.remove(); }
  }

  // The element `id` of this page replaced by that of `next`, where both have it.
  function swap(next, id) {
    var current = document.getElementById(id);
    var fresh = next.getElementById(id);
    if (current && fresh) { current.replaceWith(document.importNode(fresh, true)); }
  }

  function replaceLive(html) {
    var next = new DOMParser().parseFromString(html, "text/html");
    var freshStatus = next.getElementById("refresh-status");
    if (!next.getElementById("live") || !freshStatus) { return status.dataset.live === "true"; }
    swap(next, "live");
    swap(next, "diagnose-again");  // offered while the incident is open
    // The playbook form stays as it is while the incident is live (someone may be filling it in),
    // and gives way to what the settled page says.
    if (freshStatus.dataset.live !== "true") { swap(next, "act"); }
    dropNotice();
    status.dataset.version = freshStatus.dataset.version;
    status.dataset.live = freshStatus.dataset.live;
    say(freshStatus.dataset.live === "true");
    return freshStatus.dataset.live === "true";
  }

  // Fetch the page and swap its live part; events that come meanwhile make one more fetch after it.
  // `then(live)` (if given) is called once the page is fresh.
  var waiting = [];
  function refresh(then) {
    if (then) { waiting.push(then); }
    if (fetching) { again = true; return; }
    fetching = true;
    again = false;
    fetch(window.location.pathname, { credentials: "same-origin", cache: "no-store" })
      .then(function (r) { if (!r.ok) { throw new Error(r.status); } return r.text(); })
      .then(function (html) {
        var live = replaceLive(html);
        fetching = false;
        if (again && live) { refresh(null); return; }
        var callbacks = waiting;
        waiting = [];
        callbacks.forEach(function (callback) { callback(live); });
      })
      .catch(function () {
        fetching = false;
        status.textContent = "Could not refresh: use Reload.";
        var callbacks = waiting;
        waiting = [];
        window.setTimeout(function () {
          callbacks.forEach(function (callback) { callback(true); });
        }, RETRY_MS[RETRY_MS.length - 1]);
      });
  }

  function listen() {
    var url = status.dataset.eventsUrl + "?after=" + encodeURIComponent(after);
    var source = new EventSource(url, { withCredentials: true });
    source.addEventListener("open", function () { failures = 0; });
    source.addEventListener("audit", function (event) {
      if (event.lastEventId) { after = event.lastEventId; }
      refresh(null);
    });
    // The incident is settled, or the stream's lifetime is over: look once more, and listen again
    // only while it is live.
    source.addEventListener("end", function (event) {
      source.close();
      try { after = String(JSON.parse(event.data).next_after || after); } catch (e) { /* keep it */ }
      refresh(function (live) { if (live) { listen(); } });
    });
    // The connection failed or the store did (`event: error`): reconnect later, after the last seq.
    source.addEventListener("error", function () {
      source.close();
      failures += 1;
      if (failures >= FAILURES_BEFORE_POLL) { poll(); return; }
      window.setTimeout(listen, RETRY_MS[Math.min(failures - 1, RETRY_MS.length - 1)]);
    });
  }

  // The fallback: the version every POLL_MS, the page when it changed.
  function poll() {
    window.setTimeout(function () {
      fetch(status.dataset.versionUrl, { credentials: "same-origin", cache: "no-store" })
        .then(function (r) { if (!r.ok) { throw new Error(r.status); } return r.json(); })
        .then(function (state) {
          if (state.version === status.dataset.version) {
            if (state.live) { poll(); }
            return;
          }
          refresh(function (live) { if (live) { poll(); } });
        })
        .catch(function () {
          status.textContent = "Could not refresh: use Reload.";
          poll();
        });
    }, POLL_MS);
  }

  if (window.EventSource) { listen(); } else { poll(); }
}());
