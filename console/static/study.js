// A study page: listens to /studies/<id>/events (server-sent events, one summary.json per change)
// and redraws the curves with uPlot (static/uPlot.iife.min.js, shipped with fedcare).
(function () {
  "use strict";
  const status = document.getElementById("status");
  const study = status.dataset.study;
  const COLORS = ["#1f5fa8", "#c2410c", "#15803d", "#7c3aed", "#be185d", "#0e7490", "#a16207", "#4b5563"];
  const charts = {};

  function el(tag, text, cls) {
    const e = document.createElement(tag);
    if (text !== undefined) e.textContent = text;
    if (cls) e.className = cls;
    return e;
  }

  // One chart: x = rounds, one series per name; rebuilt when the set of series changes.
  function draw(id, rounds, seriesByName, yLabel) {
    const box = document.getElementById(id);
    const names = Object.keys(seriesByName);
    const key = names.join("|");
    const data = [rounds, ...names.map((n) => seriesByName[n])];
    const width = Math.max(box.clientWidth, 320);
    if (charts[id] && charts[id].key === key) { charts[id].plot.setData(data); return; }
    if (charts[id]) charts[id].plot.destroy();
    const series = [{ label: "round" }, ...names.map((n, i) => ({
      label: n, stroke: n === "pooled" ? "#111" : COLORS[i % COLORS.length], width: n === "pooled" ? 3 : 2,
      points: { show: true }, spanGaps: true }))];
    const plot = new uPlot({ width: width, height: 260, series: series,
      axes: [{ label: "round", incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000] }, { label: yLabel, size: 70 }],
      scales: { x: { time: false } } }, data, box);
    charts[id] = { key: key, plot: plot };
  }

  function perSilo(rounds, silos, pick) {
    const out = {};
    for (const s of silos) out[s] = rounds.map((r) => { const v = pick(r, s); return v === undefined ? null : v; });
    return out;
  }

  function render(frame) {
    const s = frame.summary || {};
    const rounds = (s.rounds || []);
    const silos = s.silos || [];
    const xs = rounds.map((r) => r.round);
    const aggregated = Math.max(0, rounds.length - 1);
    status.dataset.state = frame.state;
    status.dataset.round = String(aggregated);
    document.getElementById("state").textContent = frame.state + (frame.error ? ": " + frame.error : "");
    document.getElementById("rounds-done").textContent = String(aggregated);
    document.getElementById("rounds-total").textContent = String(frame.rounds || "?");
    document.getElementById("silos").textContent = silos.join(", ");
    for (const metric of ["auroc", "loss"]) {
      const series = perSilo(rounds, silos, (r, silo) => ((r.metrics_per_silo || {})[silo] || {})[metric]);
      series.pooled = rounds.map((r) => { const v = (r.metrics || {})[metric]; return v === undefined ? null : v; });
      draw("chart-" + metric, xs, series, metric);
    }
    draw("chart-epsilon", xs, perSilo(rounds, silos, (r, silo) => (r.epsilon || {})[silo]), "ε");
    draw("chart-bytes", xs, perSilo(rounds, silos, (r, silo) => (r.bytes_up || {})[silo]), "bytes");
    renderGates(rounds, silos);
    renderSkipped(rounds);
    if (frame.state === "done" || frame.state === "failed") renderFinal(frame, s);
  }

  function renderGates(rounds, silos) {
    const table = document.getElementById("gates");
    const last = rounds.length ? rounds[rounds.length - 1] : null;
    if (!last) return;
    const per = last.metrics_per_silo || {};
    const gates = [...new Set(silos.flatMap((s) => Object.keys(per[s] || {}).filter((k) => k.startsWith("gate_"))))].sort();
    if (!gates.length) return;
    const head = el("tr"); head.append(el("th", "silo (round " + last.round + ")"));
    gates.forEach((g) => head.append(el("th", g.slice(5))));
    table.tHead.replaceChildren(head);
    table.tBodies[0].replaceChildren(...silos.map((s) => {
      const tr = el("tr"); tr.append(el("td", s));
      gates.forEach((g) => { const v = (per[s] || {})[g]; tr.append(el("td", v === undefined ? "—" : v.toFixed(3))); });
      return tr;
    }));
  }

  function renderSkipped(rounds) {
    const rows = [];
    for (const r of rounds) {
      for (const [silo, reason] of Object.entries(r.skipped || {})) rows.push([r.round, silo, reason]);
      for (const [silo, reason] of Object.entries((r.aggregation || {}).refused || {})) rows.push([r.round, silo, "refused: " + reason]);
    }
    if (!rows.length) return;
    document.getElementById("skipped").tBodies[0].replaceChildren(...rows.map((row) => {
      const tr = el("tr"); row.forEach((v) => tr.append(el("td", String(v)))); return tr;
    }));
  }

  function renderFinal(frame, s) {
    document.getElementById("live").textContent = "(finished)";
    const box = document.getElementById("final");
    box.hidden = false;
    box.replaceChildren(el("h2", frame.state === "done" ? "Released model and its evaluation" : "The study failed"));
    if (frame.state === "done") {
      document.getElementById("download").hidden = false;
      const f = s.final || {};
      const rel = s.release;
      const fmt = (v) => (v === null || v === undefined ? "—" : Number(v).toFixed(4));
      box.append(el("p", "AUROC " + fmt(f.auroc) + ", accuracy " + fmt(f.accuracy) + ", loss " + fmt(f.loss) + "."));
      if (rel) box.append(el("p", "Released: the model after round " + rel.round + " (" + rel.reason + ")."));
      if (f.model_sha256) box.append(el("p", "Model SHA-256 " + f.model_sha256));
    } else {
      box.append(el("p", frame.error || "no reason given", "bad"));
    }
  }

  const source = new EventSource("/studies/" + encodeURIComponent(study) + "/events");
  source.addEventListener("summary", (ev) => render(JSON.parse(ev.data)));
  source.addEventListener("expired", () => { source.close(); window.location = "/login?reason=session expired"; });
  source.addEventListener("problem", (ev) => { document.getElementById("live").textContent = "(" + JSON.parse(ev.data) + ")"; });
  source.onerror = () => {
    const st = status.dataset.state;
    if (st === "done" || st === "failed") source.close();
  };
})();
