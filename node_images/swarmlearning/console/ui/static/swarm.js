// The swarm page: network, SN members, ledger audit, tasks, membership. Loaded from the API, loaded
// again when the ledger gains a record (event stream) and every few seconds (membership leases expire
// without writing a record).
"use strict";

(() => {
  const { api, el, badge, fillRows, time } = SC;
  const $ = (id) => document.querySelector(`[data-testid="${id}"]`);
  const REFRESH_MS = 5000;
  const AUDIT_MS = 30000;

  function short(hex, n = 12) {
    return hex ? `${hex.slice(0, n)}…` : "–";
  }

  async function loadNetwork() {
    const net = await api("/api/v1/network");
    $("network-name").textContent = net.name;
    document.title = `Swarm ${net.name} · Swarm console`;
    const ns = net.namespace ? ` in namespace ${net.namespace}` : "";
    $("network-summary").textContent =
      `${net.sn_members.length} SN member(s), ${net.live_nodes} live SL node(s)${ns}.`;
    $("ledger-height").textContent = `${net.ledger.height} records`;
    const head = $("ledger-head");
    head.textContent = net.ledger.head_hash ? short(net.ledger.head_hash, 16) : "(empty ledger)";
    head.title = net.ledger.head_hash;
    fillRows($("sn-table").querySelector("tbody"), net.sn_members.map((m) => el("tr", { "data-testid": "sn-row" },
      el("td", {}, m.name),
      el("td", {}, el("code", {}, m.client_urls.join(", "))),
      el("td", {}, m.learner ? badge("warn", "learner") : badge("ok", "voting member")),
    )), "No SN member answers.", 3);
  }

  async function loadAudit() {
    const audit = await api("/api/v1/ledger/verify");
    const cell = $("ledger-audit");
    cell.dataset.state = audit.ok ? "ok" : "bad";
    cell.replaceChildren(
      audit.ok
        ? badge("ok", "OK")
        : badge("bad", `FAILED at seq ${audit.bad_seq ?? "?"}${audit.reason ? `: ${audit.reason}` : ""}`),
      document.createTextNode(` ${audit.message || `${audit.count} records checked`} `),
      el("span", { class: "sub" }, "(checked at ", el("time", { datetime: new Date().toISOString() }, new Date().toLocaleTimeString()), ")"),
    );
  }

  async function loadTasks() {
    const tasks = await api("/api/v1/tasks");
    fillRows($("tasks-table").querySelector("tbody"), tasks.map((t) => el("tr", { "data-testid": "task-row", "data-contract": t.contract },
      el("td", {}, el("a", { href: `/tasks/${encodeURIComponent(t.contract)}`, "data-testid": "task-link" }, t.contract)),
      el("td", {}, t.finished ? badge("ok", "finished") : t.rounds_committed ? badge("info", "training") : badge("muted", "waiting for round 1")),
      el("td", { class: "num" }, String(t.rounds_committed)),
      el("td", { class: "num" }, t.latest_round ?? "–"),
      el("td", {}, SC.names(t.participants)),
      el("td", {}, time(t.created)),
    )), "No training contract yet.", 6);
  }

  async function loadNodes() {
    const nodes = await api("/api/v1/nodes");
    fillRows($("nodes-table").querySelector("tbody"), nodes.map((n) => {
      const rounds = Object.entries(n.last_round);
      return el("tr", { "data-testid": "node-row", "data-node": n.name, "data-live": String(n.live) },
        el("td", {}, n.name, n.leader_eligible ? "" : el("span", { class: "sub" }, " (never leads)")),
        el("td", {}, n.organisation),
        el("td", {}, el("code", { title: `sha256 ${n.fingerprint}` }, short(n.fingerprint, 16))),
        el("td", {}, n.live ? badge("ok", "● live") : badge("muted", "○ gone")),
        el("td", {}, rounds.length
          ? el("ul", { class: "plain" }, ...rounds.map(([c, r]) => el("li", {}, `${c}: round ${r}`)))
          : "–"),
        el("td", {}, el("code", {}, n.endpoint || "–")),
        el("td", {}, time(n.joined)),
      );
    }), "No SL node has joined yet.", 7);
  }

  // One after the other, the audit first: while records keep landing, every later figure is at least as
  // new as the audited chain (concurrent calls could show a height below the audited count). The audit
  // re-checks the whole chain on the server, so it runs on load and then only every AUDIT_MS.
  let audited = 0;
  async function loadAll() {
    if (Date.now() - audited >= AUDIT_MS) {
      await loadAudit();
      audited = Date.now();
    }
    await loadNetwork();
    await loadTasks();
    await loadNodes();
  }

  document.addEventListener("DOMContentLoaded", async () => {
    const me = await SC.whoami();
    if (!me) return;
    const reload = SC.keepLoading("load", loadAll, REFRESH_MS);
    // Every committed record (a member, a contract, a round) changes something on this page.
    let pending = null;
    const soon = () => { clearTimeout(pending); pending = setTimeout(reload, 300); };
    SC.stream("/api/v1/events", { member: soon, contract: soon, round: soon }, soon);
  });
})();
