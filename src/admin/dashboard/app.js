// extproc-gateway dashboard: polls /api/snapshot, diffs consecutive snapshots and
// renders rates, latency percentiles and counts per route, phase and processor.
// Plain browser JavaScript, no dependencies, nothing loaded from elsewhere.
"use strict";
(() => {
  const POLL_MS = 2000;
  const KEEP_MS = 125 * 1000; // the longest window, plus a little
  const PHASES = [
    "request_headers",
    "request_body",
    "request_trailers",
    "response_headers",
    "response_body",
    "response_trailers",
  ];
  const OUTCOMES = ["completed", "immediate_response", "error", "cancelled"];

  const $ = (id) => document.getElementById(id);
  const history = []; // [{t: ms, snap}], oldest first
  let routeInfo = []; // /routes: [{name, match, processors, phases}]
  let windowSec = 30;
  let lastOk = null;

  const params = new URLSearchParams(location.search);
  if (params.has("window")) {
    const w = Number(params.get("window"));
    if (Number.isFinite(w) && w >= 0) windowSec = w;
  }
  // ---- admin token ---------------------------------------------------------------
  // With an admin token set on the gateway, /api/snapshot and /routes need
  // `Authorization: Bearer <token>`. The page takes the token from the URL fragment
  // (`/dashboard#token=...`: a fragment is never sent to the server, and it is cleared
  // from the address bar at once) or from the form shown after a 401, and keeps it in
  // this tab only (sessionStorage).
  const TOKEN_KEY = "extproc-gateway-admin-token";
  const store = (() => {
    try {
      return window.sessionStorage;
    } catch (e) {
      return null;
    }
  })();
  let token = (store && store.getItem(TOKEN_KEY)) || "";
  const fragment = /(?:^#|&)token=([^&]*)/.exec(location.hash);
  if (fragment) {
    try {
      token = decodeURIComponent(fragment[1]).trim();
    } catch (e) {
      token = "";
    }
    if (store) store.setItem(TOKEN_KEY, token);
    window.history.replaceState(null, "", location.pathname + location.search);
  }
  let pollTimer = null;

  function askForToken(refused) {
    $("token-form").hidden = false;
    $("token-note").textContent = refused
      ? "The gateway refused this admin token."
      : "This gateway needs its admin token to show its figures.";
  }

  $("token-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const input = $("token");
    token = input.value.trim();
    input.value = "";
    if (store) store.setItem(TOKEN_KEY, token);
    $("token-form").hidden = true;
    clearTimeout(pollTimer);
    poll();
  });

  const sel = $("window");
  if (![...sel.options].some((o) => Number(o.value) === windowSec)) {
    sel.add(new Option(`last ${windowSec} s`, String(windowSec)));
  }
  sel.value = String(windowSec);
  sel.addEventListener("change", () => {
    windowSec = Number(sel.value);
    render();
  });

  // ---- formatting ----------------------------------------------------------------

  function esc(s) {
    return String(s).replace(
      /[&<>"']/g,
      (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c],
    );
  }

  function sig3(v) {
    if (v >= 100) return v.toFixed(0);
    if (v >= 10) return v.toFixed(1);
    return v.toFixed(2);
  }

  function fmtDur(q) {
    if (q == null) return "–";
    if (q.above) return `>${fmtDur({ v: q.v })}`;
    const s = q.v;
    if (s < 1e-3) return `${sig3(s * 1e6)} µs`;
    if (s < 1) return `${sig3(s * 1e3)} ms`;
    return `${sig3(s)} s`;
  }

  function fmtRate(r) {
    if (r == null) return "–";
    if (r === 0) return "0";
    if (r >= 100) return r.toFixed(0);
    if (r >= 10) return r.toFixed(1);
    if (r >= 0.1) return r.toFixed(2);
    return r.toFixed(3);
  }

  function fmtCount(n) {
    return n == null ? "–" : Number(n).toLocaleString("en-US");
  }

  function clock(d) {
    return [d.getHours(), d.getMinutes(), d.getSeconds()]
      .map((n) => String(n).padStart(2, "0"))
      .join(":");
  }

  function phaseLabel(p) {
    return p.replace("_", " ");
  }

  // ---- arithmetic ----------------------------------------------------------------

  // The q-quantile of a histogram by linear interpolation within the bucket the rank
  // falls in, as Prometheus' histogram_quantile: {v, above} or null when empty.
  function quantile(q, bounds, cum, count) {
    if (!count) return null;
    const rank = q * count;
    let i = 0;
    while (i < cum.length && cum[i] < rank) i++;
    if (i >= cum.length) return { v: bounds[bounds.length - 1], above: true };
    const lo = i === 0 ? 0 : bounds[i - 1];
    const hi = bounds[i];
    const prev = i === 0 ? 0 : cum[i - 1];
    const inBucket = cum[i] - prev;
    if (inBucket <= 0) return { v: hi };
    return { v: lo + ((hi - lo) * (rank - prev)) / inBucket };
  }

  function key(labels, names) {
    return names.map((n) => labels[n] || "").join("\u0001");
  }

  function indexSeries(list, names) {
    const m = new Map();
    for (const s of list || []) m.set(key(s.labels, names), s);
    return m;
  }

  // What a cumulative series gained since `prev` (all of it when there is no `prev`
  // or the gateway restarted in between).
  function deltaSeries(cur, prev) {
    if (!prev || cur.count < prev.count) {
      return { count: cur.count, cumulative: cur.cumulative.slice() };
    }
    return {
      count: cur.count - prev.count,
      cumulative: cur.cumulative.map((c, i) => c - (prev.cumulative[i] || 0)),
    };
  }

  function indexCounts(list) {
    const m = new Map();
    for (const c of list || []) m.set(`${c.route}\u0001${c.key}`, c.value);
    return m;
  }

  function deltaCount(value, prev) {
    return prev == null || value < prev ? value : value - prev;
  }

  // The snapshot the window starts at, or null (cumulative since start).
  function baseFor(latest) {
    if (windowSec <= 0 || history.length < 2) return null;
    const from = latest.t - windowSec * 1000 - POLL_MS / 4;
    let base = history.find((h) => h.t >= from);
    if (!base || base === latest) base = history[history.length - 2];
    return base;
  }

  function percentiles(bounds, d) {
    return {
      p50: quantile(0.5, bounds, d.cumulative, d.count),
      p90: quantile(0.9, bounds, d.cumulative, d.count),
      p99: quantile(0.99, bounds, d.cumulative, d.count),
    };
  }

  // Everything the page shows, from the latest snapshot and the window's base.
  function model() {
    const latest = history[history.length - 1];
    const base = baseFor(latest);
    const snap = latest.snap;
    const prev = base ? base.snap : null;
    const dt = base ? (latest.t - base.t) / 1000 : null;
    const bounds = snap.buckets;
    const rate = (n) => (dt ? n / dt : null);

    const routes = new Map();
    const route = (name) => {
      if (!routes.has(name)) {
        routes.set(name, {
          name,
          total: 0,
          count: 0,
          pct: {},
          outcomes: {},
          immediate: 0,
          errors: 0,
          phases: [],
          procs: [],
          spark: [],
        });
      }
      return routes.get(name);
    };
    routeInfo.forEach((r) => route(r.name));

    const prevStreams = indexSeries(prev && prev.streams, ["route"]);
    for (const s of snap.streams || []) {
      const r = route(s.labels.route);
      const d = deltaSeries(s, prevStreams.get(key(s.labels, ["route"])));
      r.total = s.count;
      r.count = d.count;
      r.rate = rate(d.count);
      r.pct = percentiles(bounds, d);
    }

    const prevMessages = indexSeries(prev && prev.messages, ["route", "phase"]);
    for (const s of snap.messages || []) {
      if (!s.count) continue;
      const d = deltaSeries(s, prevMessages.get(key(s.labels, ["route", "phase"])));
      route(s.labels.route).phases.push({
        phase: s.labels.phase,
        total: s.count,
        count: d.count,
        rate: rate(d.count),
        pct: percentiles(bounds, d),
      });
    }

    const pk = ["route", "processor", "phase"];
    const prevProcs = indexSeries(prev && prev.processors, pk);
    for (const s of snap.processors || []) {
      if (!s.count) continue;
      const d = deltaSeries(s, prevProcs.get(key(s.labels, pk)));
      route(s.labels.route).procs.push({
        processor: s.labels.processor,
        phase: s.labels.phase,
        total: s.count,
        count: d.count,
        rate: rate(d.count),
        pct: percentiles(bounds, d),
      });
    }

    const prevOutcomes = indexCounts(prev && prev.outcomes);
    for (const c of snap.outcomes || []) {
      const d = deltaCount(c.value, prevOutcomes.get(`${c.route}\u0001${c.key}`));
      const r = route(c.route);
      r.outcomes[c.key] = (r.outcomes[c.key] || 0) + d;
    }

    const listed = (list, prevList, field) => {
      const before = indexCounts(prevList);
      const rows = [];
      for (const c of list || []) {
        if (!c.value) continue;
        const [processor, extra] = c.key.split(" ");
        const d = deltaCount(c.value, before.get(`${c.route}\u0001${c.key}`));
        rows.push({ route: c.route, processor, [field]: extra, count: d, total: c.value });
        route(c.route)[field === "status" ? "immediate" : "errors"] += d;
      }
      return rows;
    };
    const immediate = listed(snap.immediate, prev && prev.immediate, "status");
    const errors = listed(snap.errors, prev && prev.errors, "kind");

    // Requests per second between consecutive polls, for the trend (the window's
    // length, at most 60 bars; 30 s when the window is "since start").
    const bars = Math.min(60, Math.max(5, Math.round((windowSec || 30) / (POLL_MS / 1000))));
    for (let i = Math.max(1, history.length - bars); i < history.length; i++) {
      const a = indexSeries(history[i - 1].snap.streams, ["route"]);
      const span = (history[i].t - history[i - 1].t) / 1000;
      for (const s of history[i].snap.streams || []) {
        const d = deltaSeries(s, a.get(key(s.labels, ["route"])));
        route(s.labels.route).spark.push(span > 0 ? d.count / span : 0);
      }
    }
    for (const r of routes.values()) r.bars = bars;

    // Config order first, then anything else that saw traffic (e.g. `unmatched`).
    const order = new Map(routeInfo.map((r, i) => [r.name, i]));
    const shown = [...routes.values()]
      .filter((r) => order.has(r.name) || r.total > 0)
      .sort((a, b) => {
        const ia = order.has(a.name) ? order.get(a.name) : 1e9;
        const ib = order.has(b.name) ? order.get(b.name) : 1e9;
        return ia - ib || a.name.localeCompare(b.name);
      });
    for (const r of shown) {
      const chain = (routeInfo.find((x) => x.name === r.name) || {}).processors || [];
      const pos = (p) => {
        const i = chain.indexOf(p);
        return i < 0 ? 1e9 : i;
      };
      r.phases.sort((a, b) => PHASES.indexOf(a.phase) - PHASES.indexOf(b.phase));
      r.procs.sort(
        (a, b) =>
          pos(a.processor) - pos(b.processor) ||
          a.processor.localeCompare(b.processor) ||
          PHASES.indexOf(a.phase) - PHASES.indexOf(b.phase),
      );
    }
    return { latest, base, dt, routes: shown, immediate, errors, active: snap.active_streams };
  }


  // ---- time series ---------------------------------------------------------------
  // One point per poll within the window, from each pair of consecutive snapshots:
  // rates are the counters' growth over the interval, latencies the percentiles (or
  // means) of what the histograms gained in it.

  function seriesModel() {
    const latest = history[history.length - 1];
    const from = windowSec > 0 ? latest.t - windowSec * 1000 - POLL_MS / 4 : -Infinity;
    let start = history.findIndex((h) => h.t >= from);
    if (start < 1) start = 1;
    const xs = [];
    const maps = {
      requests: new Map(),
      latency: new Map(),
      phases: new Map(),
      processors: new Map(),
      immediate: new Map(),
      errors: new Map(),
      active: new Map(),
    };
    const put = (map, label, k, v) => {
      let arr = map.get(label);
      if (!arr) {
        arr = [];
        map.set(label, arr);
      }
      arr[k] = v;
    };
    const ms = (q) => (q && q.v != null ? q.v * 1000 : null);
    for (let i = start; i < history.length; i++) {
      const a = history[i - 1].snap;
      const b = history[i].snap;
      const dt = (history[i].t - history[i - 1].t) / 1000;
      if (dt <= 0) continue;
      const k = xs.length;
      xs.push(history[i].t / 1000);
      const bounds = b.buckets;

      const before = indexCounts(a.outcomes);
      for (const c of b.outcomes || []) {
        const d = deltaCount(c.value, before.get(`${c.route}\u0001${c.key}`));
        if (d > 0 || maps.requests.has(`${c.route} ${c.key}`)) {
          put(maps.requests, `${c.route} ${c.key}`, k, d / dt);
        }
      }

      const prevStreams = indexSeries(a.streams, ["route"]);
      for (const st of b.streams || []) {
        const d = deltaSeries(st, prevStreams.get(key(st.labels, ["route"])));
        if (!d.count && !maps.latency.has(`${st.labels.route} p50`)) continue;
        const pct = percentiles(bounds, d);
        for (const q of ["p50", "p90", "p99"]) {
          put(maps.latency, `${st.labels.route} ${q}`, k, d.count ? ms(pct[q]) : null);
        }
      }

      // Message latency per phase, over all routes.
      const prevMessages = indexSeries(a.messages, ["route", "phase"]);
      const byPhase = new Map();
      for (const st of b.messages || []) {
        const d = deltaSeries(st, prevMessages.get(key(st.labels, ["route", "phase"])));
        if (!d.count) continue;
        const acc = byPhase.get(st.labels.phase);
        if (!acc) byPhase.set(st.labels.phase, d);
        else {
          acc.count += d.count;
          acc.cumulative = acc.cumulative.map((c, j) => c + (d.cumulative[j] || 0));
        }
      }
      for (const phase of PHASES) {
        const d = byPhase.get(phase);
        if (!d && !maps.phases.has(`${phaseLabel(phase)} p90`)) continue;
        put(maps.phases, `${phaseLabel(phase)} p90`, k, d ? ms(quantile(0.9, bounds, d.cumulative, d.count)) : null);
      }

      // Mean time per processor and phase (the histogram's sum over its count).
      const pk = ["route", "processor", "phase"];
      const prevProcs = indexSeries(a.processors, pk);
      for (const st of b.processors || []) {
        const p = prevProcs.get(key(st.labels, pk));
        const reset = !p || st.count < p.count;
        const n = reset ? st.count : st.count - p.count;
        const sum = reset ? st.sum : st.sum - p.sum;
        const label = `${st.labels.route} ${st.labels.processor} ${phaseLabel(st.labels.phase)}`;
        if (!n && !maps.processors.has(label)) continue;
        put(maps.processors, label, k, n ? (sum / n) * 1000 : null);
      }

      const counted = (list, prevList, map, name) => {
        const was = indexCounts(prevList);
        for (const c of list || []) {
          const d = deltaCount(c.value, was.get(`${c.route}\u0001${c.key}`));
          const label = name(c);
          if (d > 0 || map.has(label)) put(map, label, k, d / dt);
        }
      };
      counted(b.immediate, a.immediate, maps.immediate, (c) => `${c.route} ${c.key}`);
      counted(b.errors, a.errors, maps.errors, (c) => `error ${c.route} ${c.key}`);
      counted(b.violations, a.violations, maps.errors, (c) => `violation ${c.key}`);
      counted(b.mismatches, a.mismatches, maps.errors, (c) => `mismatch ${c.route} ${c.key}`);
      put(maps.active, "active streams", k, b.active_streams);
    }
    // Series first seen mid-window: zero rates (or no latency) before.
    const zeroBefore = new Set(["requests", "immediate", "errors", "active"]);
    const out = {};
    for (const [name, map] of Object.entries(maps)) {
      const fill = zeroBefore.has(name) ? 0 : null;
      const series = [...map.entries()]
        .sort((x, y) => x[0].localeCompare(y[0], "en", { numeric: true }))
        .map(([label, arr]) => ({
          label,
          values: Array.from({ length: xs.length }, (_, j) => (arr[j] === undefined ? fill : arr[j])),
        }));
      out[name] = { xs, series };
    }
    return out;
  }

  const CHARTS = [
    { id: "requests", title: "Requests/s by route and outcome (stacked)", unit: "req/s", stacked: true },
    { id: "latency", title: "Stream latency by route (p50, p90, p99)", unit: "ms" },
    { id: "phases", title: "Gateway time per message, by phase (p90, all routes)", unit: "ms" },
    { id: "processors", title: "Mean time in each processor, by route and phase", unit: "ms" },
    { id: "immediate", title: "Immediate responses/s by route, processor and status", unit: "/s" },
    { id: "errors", title: "Processor errors, protocol violations and mode mismatches /s", unit: "/s" },
    { id: "active", title: "Active streams", unit: "" },
  ];
  const plots = new Map(); // id -> {u, labels, hidden:Set}

  function color(i) {
    return `hsl(${(i * 137.508) % 360}, 62%, 48%)`;
  }

  function fmtValue(v, unit) {
    if (v == null) return "–";
    if (v === 0) return "0";
    if (unit === "ms") return v >= 1000 ? `${sig3(v / 1000)} s` : v >= 1 ? `${sig3(v)} ms` : `${sig3(v * 1000)} µs`;
    if (unit === "") return fmtCount(Math.round(v));
    return `${fmtRate(v)}${unit}`;
  }

  // uPlot draws stacks as cumulative sums filled down to the series below; the
  // legend and hover show each series' own value.
  function stack(series) {
    const acc = [];
    return series.map((s) => {
      const values = s.values.map((v, j) => {
        acc[j] = (acc[j] || 0) + (v || 0);
        return acc[j];
      });
      return { ...s, raw: s.values, values };
    });
  }

  function chartOpts(def, series, width) {
    const raws = series.map((s) => s.raw || s.values);
    const opts = {
      title: def.title,
      width,
      height: 200,
      cursor: { drag: { x: false, y: false } },
      scales: { x: { time: true }, y: { range: (u, min, max) => [0, max > 0 ? max * 1.05 : 1] } },
      axes: [
        { space: 70, values: (u, vals) => vals.map((v) => clock(new Date(v * 1000))) },
        {
          size: 70,
          values: (u, vals) =>
            vals.map((v) =>
              def.unit === "ms" ? fmtValue(v, "ms") : def.unit === "" ? fmtCount(v) : fmtRate(v),
            ),
        },
      ],
      legend: { live: true },
      series: [
        {},
        ...series.map((s, i) => ({
          label: s.label,
          stroke: color(i),
          width: 1.5,
          fill: def.stacked ? color(i).replace("48%)", "48%, 0.35)").replace("hsl", "hsla") : undefined,
          spanGaps: false,
          points: { show: false },
          value: (u, v, si, idx) => fmtValue(idx == null ? null : raws[si - 1][idx], def.unit),
        })),
      ],
    };
    if (def.stacked && series.length > 1) {
      // Each series fills down to the one below it (the lowest down to zero).
      opts.bands = series.slice(1).map((_, i) => ({ series: [i + 2, i + 1] }));
    }
    return opts;
  }

  function renderCharts() {
    if (typeof window.uPlot !== "function") return;
    const data = seriesModel();
    const host = $("charts");
    const summary = {};
    for (const def of CHARTS) {
      let { xs, series } = data[def.id];
      if (def.stacked) series = stack(series);
      const labels = series.map((s) => s.label).join("\u0001");
      let fig = host.querySelector(`[data-chart="${def.id}"]`);
      if (!fig) {
        fig = document.createElement("figure");
        fig.className = "chart";
        fig.dataset.chart = def.id;
        host.appendChild(fig);
      }
      fig.dataset.points = String(xs.length);
      fig.dataset.series = String(series.length);
      const plotData = [xs, ...series.map((s) => s.values)];
      let plot = plots.get(def.id);
      if (plot && plot.labels === labels && plot.stacked === !!def.stacked) {
        plot.u.setData(plotData);
      } else {
        // New series (or first draw): rebuilt, keeping the series the user hid.
        const hidden = new Set();
        if (plot) {
          plot.u.series.forEach((s, i) => {
            if (i > 0 && !s.show) hidden.add(s.label);
          });
          plot.u.destroy();
        }
        fig.textContent = "";
        const opts = chartOpts(def, series, chartWidth(fig));
        opts.series.forEach((s, i) => {
          if (i > 0 && hidden.has(s.label)) s.show = false;
        });
        plot = { u: new window.uPlot(opts, plotData, fig), labels, stacked: !!def.stacked };
        plots.set(def.id, plot);
      }
      if (!series.length) fig.dataset.nodata = "true";
      else delete fig.dataset.nodata;
      // What the chart holds, from the arrays handed to uPlot (for tests and for
      // anyone reading the page's source).
      summary[def.id] = {
        points: xs.length,
        // The figure's height on the page: bounded whatever the number of series
        // (the legend scrolls), so many routes do not push everything else away.
        height: fig.offsetHeight,
        series: series.map((s) => {
          const own = s.raw || s.values;
          const present = own.filter((v) => v != null);
          return {
            label: s.label,
            points: present.length,
            nonzero: present.filter((v) => v > 0).length,
            max: present.length ? Math.max(...present) : null,
          };
        }),
      };
    }
    $("chart-data").textContent = JSON.stringify(summary);
  }

  // The width the grid gives a chart's figure, inside its padding.
  function chartWidth(fig) {
    return Math.max(280, (fig.clientWidth || 420) - 18);
  }

  window.addEventListener("resize", () => {
    for (const [id, plot] of plots) {
      const fig = $("charts").querySelector(`[data-chart="${id}"]`);
      if (fig) plot.u.setSize({ width: chartWidth(fig), height: 200 });
    }
  });

  // ---- rendering -----------------------------------------------------------------

  function attrs(a) {
    return Object.entries(a)
      .filter(([, v]) => v != null)
      .map(([k, v]) => ` data-${k}="${esc(v)}"`)
      .join("");
  }

  function numCell(text, value, a, cls) {
    return `<td class="num${cls ? ` ${cls}` : ""}"${attrs({ ...a, value })}>${esc(text)}</td>`;
  }

  function pctCells(pct, a) {
    return ["p50", "p90", "p99"]
      .map((m) => {
        const q = pct[m];
        return numCell(fmtDur(q), q ? q.v : 0, { ...a, metric: m }, m);
      })
      .join("");
  }

  function countCell(n, a, cls) {
    return numCell(fmtCount(n), n || 0, a, n ? cls : "zero");
  }

  // Bars of req/s per poll, newest on the right, scaled to the highest.
  function spark(values, slots) {
    if (!values.length) return "";
    const w = 120;
    const h = 22;
    const max = Math.max(...values);
    const step = w / slots;
    const bar = Math.max(1, step - 1);
    const x0 = w - values.length * step;
    const rects = values
      .map((v, i) => {
        const bh = max > 0 ? Math.max(v > 0 ? 1 : 0, (v / max) * (h - 2)) : 0;
        return `<rect x="${(x0 + i * step).toFixed(1)}" y="${(h - 1 - bh).toFixed(1)}" width="${bar.toFixed(1)}" height="${bh.toFixed(1)}"/>`;
      })
      .join("");
    const title = `peak ${fmtRate(max)} req/s over the last ${values.length} polls`;
    return `<svg class="spark" width="${w}" height="${h}" viewBox="0 0 ${w} ${h}" role="img"><title>${esc(title)}</title><line x1="0" y1="${h - 0.5}" x2="${w}" y2="${h - 0.5}"/>${rects}</svg>`;
  }

  function routesTable(m) {
    const rows = m.routes
      .map((r) => {
        const a = { route: r.name };
        const info = routeInfo.find((x) => x.name === r.name);
        const chain = info ? info.processors.join(" → ") : "";
        if (!r.total) {
          return `<tr${attrs(a)}><th scope="row">${esc(r.name)}</th><td class="chain">${esc(chain)}</td><td colspan="12" class="idle" data-route="${esc(r.name)}" data-metric="idle">no traffic yet</td></tr>`;
        }
        return `<tr${attrs(a)}><th scope="row">${esc(r.name)}</th><td class="chain">${esc(chain)}</td>${numCell(
          fmtRate(r.rate),
          r.rate || 0,
          { ...a, metric: "rate" },
          "strong",
        )}${countCell(r.count, { ...a, metric: "requests" })}${countCell(r.total, { ...a, metric: "total" }, "muted")}${pctCells(r.pct, a)}${OUTCOMES.map((o) =>
          countCell(r.outcomes[o] || 0, { ...a, metric: o }, o === "completed" ? "" : `warn ${o}`),
        ).join("")}${countCell(r.errors, { ...a, metric: "processor_errors" }, "warn error")}<td class="trend">${spark(r.spark, r.bars)}</td></tr>`;
      })
      .join("");
    return `<section><h2>Routes</h2><table class="routes" data-table="routes">
<thead><tr><th rowspan="2">route</th><th rowspan="2">chain</th><th rowspan="2" class="num">req/s</th><th rowspan="2" class="num">requests</th><th rowspan="2" class="num">since<br>start</th>
<th colspan="3" class="group">stream latency</th><th colspan="4" class="group">outcome</th><th rowspan="2" class="num">proc<br>errors</th><th rowspan="2">req/s trend</th></tr>
<tr><th class="num">p50</th><th class="num">p90</th><th class="num">p99</th><th class="num">completed</th><th class="num">immediate</th><th class="num">error</th><th class="num">cancelled</th></tr></thead>
<tbody>${rows}</tbody></table></section>`;
  }

  function phaseTable(r) {
    if (!r.phases.length) return `<p class="muted">no messages yet</p>`;
    const rows = r.phases
      .map((p) => {
        const a = { route: r.name, phase: p.phase };
        return `<tr${attrs(a)}><th scope="row">${esc(phaseLabel(p.phase))}</th>${numCell(
          fmtRate(p.rate),
          p.rate || 0,
          { ...a, metric: "rate" },
        )}${countCell(p.count, { ...a, metric: "messages" })}${pctCells(p.pct, a)}</tr>`;
      })
      .join("");
    return `<table data-table="phases" data-route="${esc(r.name)}"><thead><tr><th>phase</th><th class="num">msg/s</th><th class="num">messages</th><th class="num">p50</th><th class="num">p90</th><th class="num">p99</th></tr></thead><tbody>${rows}</tbody></table>`;
  }

  function procTable(r) {
    if (!r.procs.length) return `<p class="muted">no processor calls yet</p>`;
    let last = null;
    const rows = r.procs
      .map((p) => {
        const a = { route: r.name, processor: p.processor, phase: p.phase };
        const first = p.processor !== last;
        last = p.processor;
        return `<tr class="${first ? "first" : ""}"${attrs(a)}><th scope="row">${first ? esc(p.processor) : ""}</th><td>${esc(
          phaseLabel(p.phase),
        )}</td>${numCell(fmtRate(p.rate), p.rate || 0, { ...a, metric: "rate" })}${countCell(p.count, {
          ...a,
          metric: "calls",
        })}${pctCells(p.pct, a)}</tr>`;
      })
      .join("");
    return `<table data-table="processors" data-route="${esc(r.name)}"><thead><tr><th>processor</th><th>phase</th><th class="num">calls/s</th><th class="num">calls</th><th class="num">p50</th><th class="num">p90</th><th class="num">p99</th></tr></thead><tbody>${rows}</tbody></table>`;
  }


  // ---- the chain picture -----------------------------------------------------------
  // Envoy -> each processor in order (the phases it hooks, its `when:`, its failure
  // policy, its figures in the window) -> the upstream; below, the phases the gateway
  // asks Envoy for, and what Envoy's filter config withheld (mode mismatches).

  const PHASE_SHORT = {
    request_headers: "req headers",
    request_body: "req body",
    request_trailers: "req trailers",
    response_headers: "resp headers",
    response_body: "resp body",
    response_trailers: "resp trailers",
  };
  // Which asked-for phase each mismatch reason leaves short.
  const MISMATCH_PHASE = {
    request_body_not_sent: "request_body",
    response_body_not_sent: "response_body",
    request_body_partial: "request_body",
    response_body_partial: "response_body",
    request_headers_skipped: "request_headers",
    response_headers_skipped: "response_headers",
  };

  function phaseBadge(label, cls, a) {
    const base = label.split(" ")[0];
    const mode = label.includes("(") ? label.slice(label.indexOf("(")) : "";
    return `<span class="phase ${cls || ""}"${attrs(a || {})}>${esc(PHASE_SHORT[base] || base)}${
      mode ? ` <small>${esc(mode)}</small>` : ""
    }</span>`;
  }

  function chainPicture(r) {
    const info = routeInfo.find((x) => x.name === r.name);
    if (!info) return "";
    const mismatches = Object.entries(info.mode_mismatches || {});
    const short = new Set(mismatches.map(([reason]) => MISMATCH_PHASE[reason]).filter(Boolean));
    const figures = (processor) => {
      const calls = r.procs.filter((p) => p.processor === processor);
      if (!calls.length) return `<div class="figs muted">no calls in window</div>`;
      const rate = calls.reduce((n, p) => Math.max(n, p.rate || 0), 0);
      const worst = calls.reduce((w, p) => (p.pct.p90 && (!w || p.pct.p90.v > w.v) ? p.pct.p90 : w), null);
      return `<div class="figs"><span data-route="${esc(r.name)}" data-processor="${esc(processor)}" data-metric="chain_rate" data-value="${rate}">${esc(fmtRate(rate))}/s</span> · <span data-route="${esc(r.name)}" data-processor="${esc(processor)}" data-metric="chain_p90" data-value="${worst ? worst.v : 0}">p90 ${esc(fmtDur(worst))}</span></div>`;
    };
    const arrow = '<li class="arrow" aria-hidden="true">→</li>';
    const boxes = (info.chain || [])
      .map((e, i) => {
        const phases = (e.phases || []).map((ph) => phaseBadge(ph)).join("");
        const when = e.when ? `<div class="when" title="runs only when this holds">when ${esc(e.when)}</div>` : "";
        const policy = e.on_error === "fail_open" ? `<div class="policy">fail open</div>` : "";
        return `<li class="proc" data-route="${esc(r.name)}" data-processor="${esc(e.processor)}" data-position="${i + 1}"><div class="name">${i + 1}. ${esc(
          e.processor,
        )}</div><div class="phases">${phases || '<span class="muted">no phase</span>'}</div>${when}${policy}${figures(e.processor)}</li>`;
      })
      .join(arrow);
    const asked = (info.phases || [])
      .map((ph) => phaseBadge(ph, short.has(ph.split(" ")[0]) ? "short" : "asked", { route: r.name, asked: ph.split(" ")[0] }))
      .join("");
    const warn = mismatches.length
      ? `<div class="mismatch" data-route="${esc(r.name)}" data-mismatches="${esc(mismatches.map(([k]) => k).join(","))}">Envoy's filter config gives this route less than its chain needs: ${mismatches
          .map(([reason, n]) => `<b>${esc(reason)}</b> ×${esc(fmtCount(n))}`)
          .join(", ")} (run <code>extproc-gateway check-envoy</code> on the Envoy config)</div>`
      : "";
    return `<div class="chainpic" data-chain="${esc(r.name)}"><ol class="flow"><li class="end">Envoy</li>${arrow}${
      boxes || '<li class="proc empty muted">no processors: passes through</li>'
    }${arrow}<li class="end">upstream</li></ol><div class="asked">Envoy is asked for: ${asked || '<span class="muted">request headers only</span>'}</div>${warn}</div>`;
  }

  function routeCard(r) {
    const info = routeInfo.find((x) => x.name === r.name);
    const match = info ? info.match : "";
    const tables = r.total
      ? `<div class="pair"><div><h4>Gateway time per message, by phase</h4>${phaseTable(r)}</div><div><h4>Time in each processor, by phase</h4>${procTable(r)}</div></div>`
      : `<p class="muted">no traffic yet</p>`;
    return `<section class="card" data-card="${esc(r.name)}"><h3>${esc(r.name)} <span class="muted">${esc(match)}</span></h3>
${chainPicture(r)}${tables}</section>`;
  }

  function countsTable(title, rows, field, table) {
    const body = rows.length
      ? rows
          .map((x) => {
            const a = { route: x.route, processor: x.processor, [field]: x[field] };
            return `<tr${attrs(a)}><th scope="row">${esc(x.route)}</th><td>${esc(x.processor)}</td><td>${esc(
              x[field],
            )}</td>${countCell(x.count, { ...a, metric: "count" }, "warn")}${countCell(x.total, {
              ...a,
              metric: "total",
            })}</tr>`;
          })
          .join("")
      : `<tr><td colspan="5" class="muted">none since start</td></tr>`;
    return `<div><h2>${title}</h2><table data-table="${table}"><thead><tr><th>route</th><th>processor</th><th>${field}</th><th class="num">in window</th><th class="num">since start</th></tr></thead><tbody>${body}</tbody></table></div>`;
  }

  function render() {
    if (!history.length) return;
    const m = model();
    $("active").textContent = fmtCount(m.active);
    $("active").dataset.value = String(m.active);
    $("window-note").textContent = m.base
      ? `(${m.dt.toFixed(1)} s of data)`
      : windowSec > 0
        ? "(since start until the next poll)"
        : "";
    const traffic = m.routes.some((r) => r.total > 0);
    let html = "";
    if (!traffic) {
      html += `<p class="empty" data-empty="true">no traffic yet</p>`;
    }
    html += routesTable(m);
    // Every route's card, its chain picture first; the tables once it has traffic.
    html += m.routes.map(routeCard).join("");
    html += `<section class="pair">${countsTable("Immediate responses", m.immediate, "status", "immediate")}${countsTable(
      "Processor errors",
      m.errors,
      "kind",
      "errors",
    )}</section>`;
    $("main").innerHTML = html;
    renderCharts();
  }

  // ---- polling -------------------------------------------------------------------

  async function getJson(path) {
    const headers = token ? { Authorization: `Bearer ${token}` } : {};
    const resp = await fetch(path, { cache: "no-store", headers });
    if (resp.status === 401) {
      askForToken(token !== "");
      throw new Error("HTTP 401: admin token " + (token ? "refused" : "needed"));
    }
    if (!resp.ok) throw new Error(`HTTP ${resp.status}`);
    return resp.json();
  }

  async function poll() {
    try {
      const [snap, routes] = await Promise.all([
        getJson("/api/snapshot"),
        getJson("/routes").catch(() => null),
      ]);
      if (routes) routeInfo = routes;
      const now = Date.now();
      history.push({ t: now, snap });
      while (history.length > 2 && history[1].t < now - KEEP_MS) history.shift();
      lastOk = new Date(now);
      $("updated").textContent = clock(lastOk);
      $("banner").hidden = true;
      $("main").classList.remove("stale");
      render();
    } catch (e) {
      const banner = $("banner");
      banner.textContent = `Polling /api/snapshot failed: ${e.message || e}. ${
        lastOk ? `Showing figures from ${clock(lastOk)}.` : "No figures yet."
      } Retrying every ${POLL_MS / 1000} s.`;
      banner.hidden = false;
      $("main").classList.toggle("stale", lastOk != null);
    } finally {
      pollTimer = setTimeout(poll, POLL_MS);
    }
  }

  poll();
})();
