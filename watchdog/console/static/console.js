// gl-watchdog incident console: while an incident is live, poll its version and, when it changed,
// replace the page's live part with the new one. Without JavaScript the page has a Reload link.
(function () {
  "use strict";
  var POLL_MS = 3000;
  var status = document.getElementById("refresh-status");
  if (!status || status.dataset.live !== "true" || !window.fetch) { return; }
  var version = status.dataset.version;
  var versionUrl = status.dataset.versionUrl;

  function schedule() { window.setTimeout(poll, POLL_MS); }

  function replaceLive(html) {
    var next = new DOMParser().parseFromString(html, "text/html");
    var fresh = next.getElementById("live");
    var freshStatus = next.getElementById("refresh-status");
    var current = document.getElementById("live");
    if (!fresh || !current || !freshStatus) { return false; }
    current.replaceWith(document.importNode(fresh, true));
    var notice = document.getElementById("notice");  // it spoke of the page as it was: gone now
    if (notice) { notice.remove(); }
    status.dataset.version = freshStatus.dataset.version;
    status.dataset.live = freshStatus.dataset.live;
    version = freshStatus.dataset.version;
    var time = new Date().toLocaleTimeString();
    status.textContent = freshStatus.dataset.live === "true"
      ? "Updated at " + time + "; this page updates itself while the incident is live."
      : "Updated at " + time + "; this incident is settled.";
    return freshStatus.dataset.live === "true";
  }

  function poll() {
    if (document.hidden) { schedule(); return; }
    fetch(versionUrl, { credentials: "same-origin", cache: "no-store" })
      .then(function (r) { if (!r.ok) { throw new Error(r.status); } return r.json(); })
      .then(function (state) {
        if (state.version === version) {
          if (state.live) { schedule(); }
          return null;
        }
        return fetch(window.location.pathname, { credentials: "same-origin", cache: "no-store" })
          .then(function (r) { if (!r.ok) { throw new Error(r.status); } return r.text(); })
          .then(function (html) { if (replaceLive(html)) { schedule(); } });
      })
      .catch(function () {
        status.textContent = "Could not refresh: use Reload.";
        schedule();
      });
  }

  schedule();
}());
