// overnight dashboard: refresh the parts marked data-live, show times in local time.
(function () {
  "use strict";

  function localize(root) {
    root.querySelectorAll("time[data-ts]").forEach(function (el) {
      var ts = Number(el.getAttribute("data-ts"));
      if (!ts) return;
      var d = new Date(ts * 1000);
      el.setAttribute("datetime", d.toISOString());
      el.title = d.toISOString();
      el.textContent = d.toLocaleString();
    });
  }

  function finished(el) {
    return el.querySelector("[data-final]") !== null;
  }

  function schedule(el) {
    var every = Number(el.getAttribute("data-interval")) || 2000;
    setTimeout(function () { refresh(el); }, every);
  }

  function refresh(el) {
    if (document.hidden) { schedule(el); return; }
    fetch(el.getAttribute("data-live"), { credentials: "same-origin", headers: { accept: "text/html" } })
      .then(function (r) {
        if (r.status === 401) {
          window.location.href = "/ui/login?next=" + encodeURIComponent(location.pathname + location.search);
          return null;
        }
        if (!r.ok) throw new Error("HTTP " + r.status);
        return r.text();
      })
      .then(function (html) {
        if (html === null) return;
        document.body.classList.remove("stale");
        el.innerHTML = html;
        localize(el);
        if (!finished(el)) schedule(el);
      })
      .catch(function () {
        document.body.classList.add("stale");
        schedule(el);
      });
  }

  localize(document);
  document.querySelectorAll("[data-live]").forEach(function (el) {
    if (!finished(el)) schedule(el);
  });
})();
