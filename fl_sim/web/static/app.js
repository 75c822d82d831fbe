// fl-sim serve: live refresh while a run goes, and the grid's context marks. No framework, no external script.
(function () {
  "use strict";
  const POLL_MS = 2000;

  async function getJSON(url) {
    const r = await fetch(url, { cache: "no-store" });
    if (!r.ok) throw new Error(url + ": " + r.status);
    return r.json();
  }

  // The grid legend: where this run's different-person and same-person similarity levels sit on the colour scale.
  async function loadContext() {
    const legend = document.getElementById("legend");
    if (!legend) return;
    const text = document.getElementById("context-text");
    try {
      const c = await getJSON("/api/runs/" + encodeURIComponent(legend.dataset.run) + "/context");
      const lo = parseFloat(legend.dataset.lo), hi = parseFloat(legend.dataset.hi);
      const place = (id, v, label) => {
        const el = document.getElementById(id);
        if (!el || v === null || v === undefined) return;
        el.style.left = (100 * Math.min(1, Math.max(0, (v - lo) / (hi - lo)))) + "%";
        el.dataset.label = label + " " + v.toFixed(2);
        el.hidden = false;
      };
      place("mark-between", c.between_user_mean, "other people");
      place("mark-within", c.within_user_mean, "same person");
      text.textContent = "Context (" + "sface" + "): a user's own photos match each other at " +
        c.within_user_min.toFixed(2) + "–" + c.within_user_max.toFixed(2) + " (mean " + c.within_user_mean.toFixed(2) +
        "); different users at " + c.between_user_mean.toFixed(2) + " on average" +
        (c.sampled ? " (a seeded sample of " + c.users + " of the run's users)." : ".");
      text.classList.remove("muted");
    } catch (e) {
      text.textContent = "Context unavailable (" + e.message + ").";
    }
  }

  // The run page: poll the progress; when it moves, swap in the server-rendered live parts (no page reload).
  function runPage(live) {
    const id = encodeURIComponent(live.dataset.run);
    let last = null;
    async function tick() {
      let p;
      try { p = await getJSON("/api/runs/" + id + "/progress"); } catch (e) { setTimeout(tick, POLL_MS * 2); return; }
      const sig = JSON.stringify([p.status, p.rounds_done, p.attacks]);
      if (sig !== last) {  // the first poll refreshes too: the page may be older than its first answer
        const r = await fetch(live.dataset.src, { cache: "no-store" });
        if (r.ok) { live.innerHTML = await r.text(); loadContext(); }
      }
      last = sig;
      live.dataset.status = p.status;
      if (p.status === "running") setTimeout(tick, POLL_MS);
    }
    if (live.dataset.status === "running") tick();
  }

  // The runs page: while some run is going, update each row's status, progress and accuracy in place.
  function runsPage(table) {
    async function tick() {
      let idx;
      try { idx = await getJSON("/api/runs"); } catch (e) { setTimeout(tick, POLL_MS * 2); return; }
      let running = false;
      for (const r of idx.runs) {
        const row = table.querySelector('tr[data-run="' + CSS.escape(r.id) + '"]');
        if (!row || !r.progress) continue;
        running = running || r.status === "running";
        const st = row.querySelector(".status .badge");
        if (st) { st.textContent = r.status; st.className = "badge st-" + r.status; }
        const pr = row.querySelector(".progress");
        if (pr) pr.textContent = r.progress.text;
        const acc = row.querySelector(".acc");
        if (acc) acc.textContent = r.accuracy === null ? "-" : r.accuracy.toFixed(3);
      }
      if (running) setTimeout(tick, POLL_MS);
    }
    if (table.dataset.live === "1") setTimeout(tick, POLL_MS);
  }

  document.addEventListener("DOMContentLoaded", () => {
    const live = document.getElementById("live");
    if (live) { runPage(live); loadContext(); }
    const table = document.getElementById("runs-table");
    if (table) runsPage(table);
  });
})();
