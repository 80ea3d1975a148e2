// Shared by the console's pages: API calls that explain their failures on the page, the event stream
// with its reconnection, and small DOM helpers (text only: nothing from the API is parsed as HTML).
"use strict";

const SC = (() => {
  class ApiError extends Error {
    constructor(status, detail, path) {
      super(detail);
      this.status = status; // 0: no answer at all
      this.detail = detail;
      this.path = path;
    }
  }

  // What a failed call means for the person looking at the page.
  function explain(err) {
    const detail = err.detail ? ` The console says: “${err.detail}”` : "";
    if (err.status === 401) {
      return ["Not signed in (401).",
        "Open the console with the link swarmctl printed (…/?token=…), or send a bearer token or a " +
        "client certificate of the swarm's CA." + detail];
    }
    if (err.status === 403) return ["Not allowed (403).", "Your identity lacks a right this page needs." + detail];
    if (err.status === 404) return ["Not found (404).", `${err.path} does not exist.` + detail];
    if (err.status >= 500) return [`The console failed (${err.status}).`, "It will be asked again shortly." + detail];
    if (err.status === 0) return ["The console does not answer.", "It will be asked again shortly." + detail];
    return [`Request refused (${err.status}).`, detail.trim()];
  }

  // One message per source (a data load, the event stream), shown together in the alert region.
  const problems = new Map();
  function renderProblems() {
    const box = document.querySelector('[data-testid="status-banner"]');
    if (!box) return;
    box.replaceChildren();
    for (const [source, p] of problems) {
      const div = el("div", { class: `problem ${p.level}`, "data-testid": "problem", "data-source": source,
        "data-status": String(p.status) });
      div.append(el("strong", {}, p.title), document.createTextNode(p.text));
      box.append(div);
    }
    box.hidden = problems.size === 0;
  }
  function problem(source, title, text, { level = "", status = "" } = {}) {
    problems.set(source, { title, text, level, status });
    renderProblems();
  }
  function clear(source) {
    if (problems.delete(source)) renderProblems();
  }

  async function api(path) {
    let resp;
    try {
      resp = await fetch(path, { credentials: "same-origin", headers: { Accept: "application/json" } });
    } catch (e) {
      throw new ApiError(0, String(e.message || e), path);
    }
    if (!resp.ok) {
      let detail = resp.statusText;
      try {
        const body = await resp.json();
        if (body && body.detail) detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
      } catch (_) { /* not JSON: keep the status text */ }
      throw new ApiError(resp.status, detail, path);
    }
    return resp.json();
  }

  // Run `load` now and again every `everyMs` (0: once); a failure is shown under `source` until a load
  // works, and the load is retried after RETRY_MS, except after 401/403/404 (asking again cannot help).
  const RETRY_MS = 5000;
  function keepLoading(source, load, everyMs) {
    let timer = null;
    async function run() {
      clearTimeout(timer);
      try {
        await load();
        clear(source);
        if (everyMs) timer = setTimeout(run, everyMs);
      } catch (e) {
        if (!(e instanceof ApiError)) throw e;
        const [title, text] = explain(e);
        problem(source, title, " " + text, { status: e.status });
        if (![401, 403, 404].includes(e.status)) timer = setTimeout(run, Math.max(everyMs, RETRY_MS));
      }
    }
    run();
    return run; // call to load again now
  }

  // An EventSource on `url` calling handlers[type](data, id). The browser reconnects by itself (with
  // Last-Event-ID) after a dropped connection; when it gives up (an error status), the reason is asked
  // from the API and a new stream is opened after a backoff. `resync` runs after every reconnection, so
  // the page can fetch whatever it may have missed.
  function stream(url, handlers, resync) {
    const status = document.querySelector('[data-testid="stream-status"]');
    const setStatus = (state, text) => {
      if (!status) return;
      status.dataset.state = state;
      status.textContent = text;
    };
    let es = null;
    let dropped = false;
    let backoffMs = 1000;
    function open() {
      setStatus("connecting", "connecting…");
      es = new EventSource(url, { withCredentials: true });
      es.onopen = () => {
        setStatus("live", "live");
        clear("stream");
        backoffMs = 1000;
        if (dropped && resync) resync();
        dropped = false;
      };
      es.onerror = () => {
        dropped = true;
        if (es.readyState === EventSource.CONNECTING) {
          setStatus("reconnecting", "reconnecting…");
          problem("stream", "Live updates interrupted.", " The event stream dropped; reconnecting…",
            { level: "warn" });
          return;
        }
        es.close();
        setStatus("stopped", "stopped");
        whyClosed().then(({ retry, title, text, status: code }) => {
          problem("stream", title, " " + text, { status: code, level: retry ? "warn" : "" });
          if (retry) {
            setTimeout(open, backoffMs);
            backoffMs = Math.min(backoffMs * 2, 15000);
          }
        });
      };
      for (const [type, handle] of Object.entries(handlers)) {
        es.addEventListener(type, (ev) => {
          let data;
          try { data = JSON.parse(ev.data); } catch (_) { return; }
          handle(data, ev.lastEventId);
        });
      }
    }
    async function whyClosed() {
      try {
        await api("/api/v1/whoami");
      } catch (e) {
        if (e instanceof ApiError) {
          const [title, text] = explain(e);
          return { retry: !(e.status === 401 || e.status === 403), title: "Live updates stopped: " + title, text, status: e.status };
        }
      }
      return { retry: true, title: "Live updates interrupted.", text: "The event stream was refused; retrying…", status: "" };
    }
    open();
  }

  async function whoami() {
    const box = document.querySelector('[data-testid="whoami"]');
    try {
      const me = await api("/api/v1/whoami");
      if (box) box.textContent = `Signed in as ${me.principal} (${me.method}; rights: ${me.rights.join(", ")})`;
      return me;
    } catch (e) {
      if (box) box.textContent = "Not signed in";
      if (e instanceof ApiError) {
        const [title, text] = explain(e);
        problem("whoami", title, " " + text, { status: e.status });
      }
      return null;
    }
  }

  // el("td", {class: "num"}, "text", child, …): attributes set as attributes, children as text or nodes.
  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) if (v !== undefined && v !== null) node.setAttribute(k, v);
    for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    return node;
  }

  // Node names, comma-separated; a name never breaks across lines.
  function names(list) {
    if (!list.length) return document.createTextNode("–");
    const span = el("span", { class: "names" });
    list.forEach((n, i) => span.append(i ? ", " : "", el("span", { class: "nowrap" }, n)));
    return span;
  }

  function badge(kind, text) {
    return el("span", { class: `badge ${kind}` }, text);
  }

  function fillRows(tbody, rows, emptyText, columns) {
    tbody.replaceChildren();
    if (!rows.length) {
      tbody.append(el("tr", { class: "empty" }, el("td", { colspan: String(columns) }, emptyText)));
      return;
    }
    tbody.append(...rows);
  }

  function time(iso) {
    if (!iso) return "–";
    const d = new Date(iso);
    if (Number.isNaN(d.getTime())) return iso;
    return el("time", { datetime: iso, title: iso }, d.toLocaleString());
  }

  function fmt(x, digits = 4) {
    if (x === null || x === undefined || Number.isNaN(x)) return "–";
    let s = Number(x).toPrecision(digits);
    if (s.includes(".") && !s.includes("e")) s = s.replace(/0+$/, "").replace(/\.$/, "");
    return s;
  }

  return { ApiError, api, explain, problem, clear, keepLoading, stream, whoami, el, badge, names, fillRows, time, fmt };
})();
