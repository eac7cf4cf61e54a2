// overnight dashboard: refresh the parts marked data-live, show times in local time, and
// run the actions (cancel, retry, delete, upload + create) through the API at /ui/v1/...,
// which the server passes on with the login's key. Errors show the API's own message.
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

  function toLogin() {
    window.location.href = "/ui/login?next=" + encodeURIComponent(location.pathname + location.search);
  }

  function schedule(el) {
    var every = Number(el.getAttribute("data-interval")) || 2000;
    clearTimeout(el._timer);
    el._timer = setTimeout(function () { refresh(el); }, every);
  }

  // One refresh at a time per element; a refresh asked for meanwhile runs right after.
  function refresh(el) {
    clearTimeout(el._timer);
    if (el._busy) { el._again = true; return; }
    if (document.hidden) { schedule(el); return; }
    el._busy = true;
    fetch(el.getAttribute("data-live"), { credentials: "same-origin", headers: { accept: "text/html" } })
      .then(function (r) {
        if (r.status === 401) { toLogin(); return null; }
        if (!r.ok) throw new Error("HTTP " + r.status);
        return r.text();
      })
      .then(function (html) {
        el._busy = false;
        if (html === null) return;
        document.body.classList.remove("stale");
        var kept = el.querySelector("[data-summary]");  // loaded on its own clock
        el.innerHTML = html;
        var fresh = el.querySelector("[data-summary]");
        if (kept && fresh) fresh.replaceWith(kept);
        localize(el);
        if (el._again) {
          el._again = false;
          refresh(el);
        } else if (!finished(el)) {
          schedule(el);
        } else {
          document.querySelectorAll("[data-summary]").forEach(loadSummary);  // the final count
          var n = document.getElementById("notice");
          if (n && n.classList.contains("ok")) notice("");  // "Cancelling…" is over
        }
      })
      .catch(function () {
        el._busy = false;
        document.body.classList.add("stale");
        schedule(el);
      });
  }

  function notice(text, kind) {
    var n = document.getElementById("notice");
    if (!n) return;
    n.textContent = text || "";
    n.className = "notice " + (kind || "error");
    n.hidden = !text;
  }

  // A call of the API through the dashboard; rejects with the API's error message.
  function call(method, url, body) {
    var opts = {
      method: method,
      credentials: "same-origin",
      headers: { accept: "application/json", "x-overnight-dashboard": "1" },
    };
    if (body instanceof FormData) {
      opts.body = body;
    } else if (body !== undefined) {
      opts.body = JSON.stringify(body);
      opts.headers["content-type"] = "application/json";
    }
    return fetch(url, opts).then(function (r) {
      return r.text().then(function (text) {
        var data = null;
        try { data = JSON.parse(text); } catch (e) { data = null; }
        if (!r.ok) {
          var err = data && data.error;
          var message = (err && err.message) || "HTTP " + r.status + (text ? ": " + text.slice(0, 200) : "");
          throw new Error(message);
        }
        return data;
      });
    });
  }

  function afterAction(btn, data) {
    var how = btn.getAttribute("data-done");
    if (how === "open-batch") {
      window.location.href = "/ui/batches/" + encodeURIComponent(data.id);
      return;
    }
    notice(btn.getAttribute("data-said"), "ok");
    if (how === "remove-row") {
      var row = btn.closest("tr");
      if (row) row.parentNode.removeChild(row);
      return;
    }
    var live = btn.closest("[data-live]");
    if (live) refresh(live);
  }

  document.addEventListener("click", function (ev) {
    var btn = ev.target.closest("[data-action]");
    if (!btn || btn.disabled) return;
    ev.preventDefault();
    var question = btn.getAttribute("data-confirm");
    if (question && !window.confirm(question)) return;
    var action = btn.getAttribute("data-action").split(" ");
    btn.disabled = true;
    notice("");
    call(action[0], action[1])
      .then(function (data) { afterAction(btn, data); })
      .catch(function (err) { notice(err.message); btn.disabled = false; });
  });

  function metadataOf(text) {
    var metadata = {};
    var bad = [];
    text.split("\n").forEach(function (line) {
      line = line.trim();
      if (!line) return;
      var at = line.indexOf("=");
      if (at < 1) { bad.push(line); return; }
      metadata[line.slice(0, at).trim()] = line.slice(at + 1).trim();
    });
    if (bad.length) throw new Error("Metadata lines are key=value; not: " + bad.join(", "));
    return Object.keys(metadata).length ? metadata : undefined;
  }

  // Upload the .jsonl (POST /v1/files), then create the batch from it (POST /v1/batches).
  document.addEventListener("submit", function (ev) {
    var form = ev.target;
    if (!form.matches("form[data-create]")) return;
    ev.preventDefault();
    var submit = form.querySelector("[type=submit]");
    var file = form.elements.file.files[0];
    var metadata;
    try {
      if (!file) throw new Error("Choose a .jsonl file of requests.");
      metadata = metadataOf(form.elements.metadata.value);
    } catch (err) {
      notice(err.message);
      return;
    }
    var upload = new FormData();
    upload.append("purpose", "batch");
    upload.append("file", file, file.name);
    submit.disabled = true;
    notice("Uploading " + file.name + "…", "ok");
    var uploaded = null;
    call("POST", "/ui/v1/files", upload)
      .then(function (f) {
        uploaded = f;
        var body = {
          input_file_id: f.id,
          endpoint: form.elements.endpoint.value,
          completion_window: form.elements.completion_window.value,
        };
        if (metadata) body.metadata = metadata;
        return call("POST", "/ui/v1/batches", body);
      })
      .then(function (batch) {
        window.location.href = "/ui/batches/" + encodeURIComponent(batch.id);
      })
      .catch(function (err) {
        var where = uploaded ? "Uploaded " + uploaded.id + ", but the batch was not created: " : "Upload refused: ";
        notice(where + err.message);
        submit.disabled = false;
      });
  });

  // Failures grouped by code, from the API's results summary: every few seconds while
  // the batch runs (it reads every failed request, so not on each refresh), once at the end.
  var TERMINAL = ["completed", "failed", "expired", "cancelled"];

  function cell(row, text, cls) {
    var td = document.createElement("td");
    td.textContent = text;
    if (cls) td.className = cls;
    row.appendChild(td);
  }

  function loadSummary(el) {
    call("GET", el.getAttribute("data-summary"))
      .then(function (s) {
        var body = el.querySelector("tbody");
        body.textContent = "";
        s.failures.forEach(function (g) {
          var row = document.createElement("tr");
          cell(row, g.code, "mono");
          cell(row, g.model || "—", "mono small");
          cell(row, g.count.toLocaleString(), "num");
          cell(row, g.message);
          body.appendChild(row);
        });
        el.querySelector("[data-k=finished]").textContent =
          "(" + s.request_counts.failed.toLocaleString() + " failed of " + s.finished.toLocaleString() + " finished)";
        el.hidden = s.failures.length === 0;
        if (TERMINAL.indexOf(s.status) < 0) setTimeout(function () { loadSummary(el); }, 5000);
      })
      .catch(function () { setTimeout(function () { loadSummary(el); }, 10000); });
  }

  // A new choice in the form makes the last refusal old news.
  document.addEventListener("change", function (ev) {
    if (ev.target.closest("form[data-create]")) notice("");
  });

  localize(document);
  document.querySelectorAll("[data-summary]").forEach(loadSummary);
  document.querySelectorAll("[data-live]").forEach(function (el) {
    if (!finished(el)) schedule(el);
  });
})();
