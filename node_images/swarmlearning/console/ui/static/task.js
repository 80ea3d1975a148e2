// A task's page: its rounds from /api/v1/tasks/{contract}, then every `round` event of the stream
// added as it commits (a round seen first as `open` is replaced by its result). Curves, timeline and
// state are redrawn from that one map of rounds.
"use strict";

(() => {
  const { api, el, badge, fillRows, fmt } = SC;
  const $ = (id) => document.querySelector(`[data-testid="${id}"]`);
  const contract = document.querySelector("main").dataset.contract;
  const base = `/api/v1/tasks/${encodeURIComponent(contract)}`;
  const rounds = new Map(); // round number -> Round JSON
  let task = null;
  let rights = [];
  const SHOWN = 20; // timeline rows shown until the person asks for all
  let showAll = false;

  function upsert(r) {
    if (r.contract !== contract) return;
    const old = rounds.get(r.round);
    // A later record (higher seq) supersedes: open -> round/abandon, or a retried attempt.
    if (!old || r.seq >= old.seq) rounds.set(r.round, r);
  }

  function nodeNames() {
    const names = new Set(task ? task.participants : []);
    for (const r of rounds.values()) {
      for (const n of [...r.participants, ...Object.keys(r.loss), ...Object.keys(r.metric)]) names.add(n);
    }
    return [...names].sort();
  }

  function curves() {
    const names = nodeNames();
    const ordered = [...rounds.values()].sort((a, b) => a.round - b.round);
    for (const [field, id, label] of [["loss", "loss", "validation loss"], ["metric", "metric", "validation metric"]]) {
      const series = names.map((name) => ({
        name,
        points: ordered.filter((r) => Number.isFinite(r[field][name])).map((r) => ({ x: r.round, y: r[field][name] })),
      }));
      SCChart.draw($(`${id}-chart`), $(`${id}-legend`), series, {
        title: `${label} of each node after each round of ${contract} (every value is also in the Rounds table)`,
        xLabel: "round",
        yLabel: label,
        empty: "No round has reported a value yet.",
        describe: (n, p) => `${n}, round ${p.x}: ${label} ${fmt(p.y)}`,
      });
    }
  }

  function resultBadge(r) {
    if (r.result === "round") return badge(r.final ? "ok" : "info", r.final ? "merged · final" : "merged");
    if (r.result === "abandon") return badge("bad", "abandoned");
    return badge("muted", "closed, merging…");
  }

  // Secure aggregation and the ε spent (site-level DP, and the highest DP-SGD ε of a node), under the merge.
  function privacyNote(r) {
    const p = r.privacy;
    if (!p) return "";
    const parts = [];
    if (p.secure_aggregation) parts.push(`secure aggregation${p.secagg_dropped.length ? `, ${p.secagg_dropped.length} dropped` : ""}`);
    if (p.site_dp_epsilon != null) parts.push(`site ε ${fmt(p.site_dp_epsilon, 2)} (δ ${p.site_dp_delta})`);
    const sgd = Object.values(p.dp_sgd_epsilon);
    if (sgd.length) parts.push(`DP-SGD ε ≤ ${fmt(Math.max(...sgd), 2)}`);
    return el("span", { class: "sub", "data-testid": "round-privacy" }, " · " + parts.join(" · "));
  }

  function timeline() {
    const ordered = [...rounds.values()].sort((a, b) => b.round - a.round);
    const rejectedCount = ordered.reduce((n, r) => n + Object.keys(r.rejected).length, 0);
    const rows = ordered.slice(0, showAll ? ordered.length : SHOWN).map((r) => {
      const rejected = Object.entries(r.rejected).sort();
      const values = Object.keys({ ...r.loss, ...r.metric }).sort().map((n) =>
        el("li", {}, `${n}: ${fmt(r.loss[n], 3)} / ${fmt(r.metric[n], 3)}`));
      return el("tr", {
        "data-testid": "round-row", "data-round": String(r.round), "data-result": r.result,
        class: rejected.length ? "has-rejection" : undefined,
      },
      el("th", { scope: "row", class: "num" }, String(r.round), r.attempt > 1 ? el("span", { class: "sub" }, ` (attempt ${r.attempt})`) : ""),
      el("td", {}, resultBadge(r)),
      el("td", {}, r.leader || "–",
        r.slices && r.slices.length
          ? el("span", { class: "sub", title: r.slices.map((x) => `slice ${x.slice}: ${x.leader}`).join("\n") },
            ` + ${r.slices.length} slice leaders`)
          : ""),
      el("td", {}, SC.names(r.participants)),
      el("td", {}, (r.merge_method || "–") + (r.merge_mode === "sharded" ? " (sharded)" : ""), privacyNote(r)),
      el("td", { class: "num" }, r.duration_s == null ? "–" : `${r.duration_s.toFixed(2)} s`),
      el("td", { class: "values" }, values.length ? el("ul", { class: "plain" }, ...values) : "–"),
      el("td", {}, rejected.length
        ? el("ul", { class: "rejections" }, ...rejected.map(([n, why]) =>
          el("li", { "data-testid": "rejection", "data-node": n }, el("strong", {}, n), `: ${why}`)))
        : "none"),
      );
    });
    fillRows($("round-timeline").querySelector("tbody"), rows, "No round closed yet.", 8);
    $("rejection-summary").textContent = rejectedCount
      ? `${rejectedCount} input(s) rejected by the leaders (highlighted below).`
      : "No input has been rejected.";
    const toggle = $("timeline-toggle");
    toggle.hidden = ordered.length <= SHOWN;
    toggle.setAttribute("aria-expanded", String(showAll));
    toggle.textContent = showAll ? `Show the newest ${SHOWN} rounds only` : `Show all ${ordered.length} rounds`;
  }

  function state() {
    const box = $("task-state");
    const committed = [...rounds.values()].filter((r) => r.result === "round");
    const latest = committed.reduce((a, r) => (a && a.round > r.round ? a : r), null);
    const finished = Boolean(latest && latest.final) || Boolean(task && task.finished);
    box.dataset.state = finished ? "finished" : committed.length ? "training" : "waiting";
    box.replaceChildren(
      finished ? badge("ok", "finished") : committed.length ? badge("info", "training") : badge("muted", "waiting"),
      document.createTextNode(finished
        ? ` Final model from round ${latest ? latest.round : task.latest_round}; ${committed.length} round(s) merged.`
        : ` ${committed.length} round(s) merged${latest ? `, latest round ${latest.round}` : ""}; participants: ${nodeNames().join(", ") || "none yet"}.`),
    );
    const model = $("model-box");
    if (!latest) {
      model.replaceChildren(el("p", {}, "No merged model yet."));
      return;
    }
    const download = rights.includes("model")
      ? el("a", { href: `${base}/model`, download: `${contract}-round-${latest.round}.safetensors`, "data-testid": "model-link" },
        finished ? "Download the final model" : `Download the latest merged model (round ${latest.round})`)
      : el("span", {}, "Your identity lacks the “model” right needed to download it.");
    const digest = latest.merged_digest
      ? el("code", { title: latest.merged_digest }, `${latest.merged_digest.slice(0, 16)}…`) : "–";
    model.replaceChildren(
      el("dl", { class: "facts" },
        el("dt", {}, finished ? "Final round" : "Latest round"), el("dd", {}, String(latest.round)),
        el("dt", {}, "Merged by"), el("dd", {}, `${latest.leader || "–"} (${latest.merge_method || "–"} of ${latest.participants.length} input(s))`),
        el("dt", {}, "sha256"), el("dd", {}, digest),
        el("dt", {}, "Committed"), el("dd", {}, SC.time(latest.committed_at)),
      ),
      el("p", {}, download, " (safetensors; the console checks its digest against the ledger before sending it)"),
    );
  }

  function params() {
    const dl = $("task-params");
    dl.replaceChildren();
    if (!task) return;
    const facts = [["created", SC.time(task.created)], ["author", task.author],
      ...Object.entries(task.params).sort().map(([k, v]) => [k, typeof v === "object" ? JSON.stringify(v) : String(v)])];
    for (const [k, v] of facts) dl.append(el("dt", {}, k), el("dd", {}, v));
  }

  function render() {
    curves();
    timeline();
    state();
    params();
  }

  async function load() {
    let detail;
    try {
      detail = await api(base);
    } catch (e) {
      // A page opened before the task's first record: it fills in when the stream brings the contract.
      if (!(e instanceof SC.ApiError && e.status === 404)) throw e;
      const box = $("task-state");
      box.dataset.state = "unknown";
      box.replaceChildren(badge("muted", "not on the ledger"),
        document.createTextNode(` The ledger has no contract ${contract} (yet): this page fills in when it begins.`));
      return;
    }
    task = detail;
    for (const r of detail.rounds) upsert(r);
    render();
  }

  document.addEventListener("DOMContentLoaded", async () => {
    const me = await SC.whoami();
    if (!me) return;
    rights = me.rights;
    // Loaded once, then kept current by the stream; reloaded after a reconnection or while it fails.
    let streaming = false;
    const reload = SC.keepLoading("load", async () => {
      await load();
      if (!streaming) {
        streaming = true;
        SC.stream(`/api/v1/events?contract=${encodeURIComponent(contract)}`, {
          round: (r) => { upsert(r); render(); },
          contract: () => reload(),
        }, () => reload());
      }
    }, 0);
    window.addEventListener("online", () => reload());
    $("timeline-toggle").addEventListener("click", () => { showAll = !showAll; timeline(); });
  });
})();
