// Charts of the dashboard: every [data-series] element names one series of
// /api/v1/telemetry/ (scope, key, start, end, points); it is fetched once with the
// page's session and drawn into each canvas[data-chart] inside. When done, a
// canvas carries data-points (how many points it shows; a chart with none says
// "No data in this range." in place of its canvas, and is named in the message
// above the charts) and the container data-state = ready (something drawn) |
// empty | error, which tests and people can rely on.
(function () {
  "use strict";

  const COLOURS = ["#2563eb", "#d97706", "#dc2626", "#059669", "#7c3aed"];
  // Confidence bands, low to high: red to green, each distinct in lightness too.
  const BANDS = ["#b91c1c", "#ea580c", "#ca8a04", "#65a30d", "#047857"];
  const INK = "#1d2430";
  const timeFormat = new Intl.DateTimeFormat(undefined, { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" });

  function line(label, values, colour, axis) {
    return { type: "line", label, data: values, borderColor: colour, backgroundColor: colour, yAxisID: axis || "y",
             pointRadius: 2, borderWidth: 2, spanGaps: true, tension: 0.2 };
  }

  function xy(points, field) {
    return points.map((p) => ({ x: Date.parse(p.t), y: p[field] }));
  }

  // The whole requested range, so one point sits where it belongs rather than filling the axis.
  function timeAxis(range) {
    return { type: "linear", min: range.min, max: range.max,
             ticks: { maxTicksLimit: 6, callback: (v) => timeFormat.format(new Date(v)) } };
  }

  const percent = { ticks: { callback: (v) => Math.round(v * 1000) / 10 + " %" }, beginAtZero: true };

  // Each chart: its datasets from the series body, and its scales.
  const CHARTS = {
    "site-overview": (body, range) => ({
      datasets: [line("p95 latency (ms)", xy(body.points, "latency_p95_ms"), COLOURS[0]),
                 line("escalation rate", xy(body.points, "escalation_rate"), COLOURS[1], "rate")],
      scales: { x: timeAxis(range), y: { beginAtZero: true, title: { display: true, text: "ms" } },
                rate: { ...percent, position: "right", grid: { drawOnChartArea: false } } },
    }),
    latency: (body, range) => ({
      datasets: ["p50", "p95", "p99"].map((q, i) => line(q, xy(body.points, `latency_${q}_ms`), COLOURS[i])),
      scales: { x: timeAxis(range), y: { beginAtZero: true, title: { display: true, text: "ms" } } },
    }),
    // Per second of each step, so a range of minutes and a range of hours read the same.
    frames: (body, range) => {
      const perSecond = (field) => body.points.map((p) => ({ x: Date.parse(p.t), y: p[field] / (body.step_s || 60) }));
      return {
        datasets: [line("frames/s", perSecond("frames"), COLOURS[0]), line("dropped/s", perSecond("dropped_frames"), COLOURS[2])],
        scales: { x: timeAxis(range), y: { beginAtZero: true, title: { display: true, text: "frames/s" } } },
        empty: body.points.every((p) => !p.frames && !p.dropped_frames),
      };
    },
    // How the confidence distribution moves: each step's frames split into five bands, stacked to 100 %.
    confidence: (body, range) => {
      const steps = body.points.filter((p) => (p.confidence_distribution || []).some((v) => v > 0));
      const bins = steps.length ? steps[0].confidence_distribution.length : 0;
      const per = Math.max(1, Math.round(bins / BANDS.length));
      const bands = BANDS.map((colour, b) => ({
        type: "bar", label: `${(b * per / bins).toFixed(1)}–${(Math.min(bins, (b + 1) * per) / bins).toFixed(1)}`,
        data: steps.map((p) => ({ x: Date.parse(p.t),
                                  y: p.confidence_distribution.slice(b * per, (b + 1) * per).reduce((a, v) => a + v, 0) })),
        backgroundColor: colour, stack: "bands", barPercentage: 1, categoryPercentage: 1,
      }));
      return {
        datasets: [{ ...line("mean confidence", xy(steps, "mean_confidence"), INK), stack: "mean" }, ...bands],
        scales: { x: { ...timeAxis(range), stacked: true }, y: { ...percent, stacked: true, max: 1 } },
        empty: steps.length === 0,
      };
    },
    "confidence-histogram": (body, range) => {
      const bins = body.summary.confidence_distribution || [];
      const width = bins.length ? 1 / bins.length : 0;
      return {
        labels: bins.map((_, i) => (i * width).toFixed(2)),
        datasets: [{ type: "bar", label: "share of frames", data: bins, backgroundColor: COLOURS[3] }],
        scales: { x: { type: "category", title: { display: true, text: "confidence" } }, y: percent },
        empty: !bins.some((v) => v > 0),
      };
    },
    escalation: (body, range) => ({
      datasets: [line("escalation rate", xy(body.points, "escalation_rate"), COLOURS[1])],
      scales: { x: timeAxis(range), y: percent },
    }),
    health: (body, range) => {
      const health = body.health || [];
      return {
        datasets: [line("max temperature (°C)", xy(health, "temperature_c_max"), COLOURS[2]),
                   line("min CPU clock (MHz)", xy(health, "cpu_freq_mhz_min"), COLOURS[4], "mhz")],
        scales: { x: timeAxis(range), y: { title: { display: true, text: "°C" } },
                  mhz: { position: "right", title: { display: true, text: "MHz" }, grid: { drawOnChartArea: false } } },
        empty: health.length === 0,
      };
    },
    outbox: (body, range) => {
      const health = body.health || [];
      return {
        datasets: [line("deepest outbox (records)", xy(health, "outbox_depth_max"), COLOURS[4])],
        scales: { x: timeAxis(range), y: { beginAtZero: true, title: { display: true, text: "records" } } },
        empty: health.length === 0,
      };
    },
  };

  // Points that carry a value: a bucket with no heartbeat temperature is a gap, not a point.
  function counted(values) {
    return values.filter((v) => v !== null && v !== undefined && (typeof v !== "object" || v.y !== null)).length;
  }

  // Draws one chart and returns how many points it shows (0: nothing drawn).
  function draw(canvas, body, range) {
    const spec = CHARTS[canvas.dataset.chart](body, range);
    const shown = spec.empty ? 0 : Math.max(0, ...spec.datasets.map((d) => counted(d.data)));
    canvas.dataset.points = String(shown);
    if (shown === 0) return 0;
    new Chart(canvas, {
      data: { labels: spec.labels, datasets: spec.datasets },
      options: {
        responsive: true, maintainAspectRatio: false, animation: false, interaction: { mode: "index", intersect: false },
        scales: spec.scales, plugins: { legend: { position: "bottom", labels: { boxWidth: 12 } } },
      },
    });
    return shown;
  }

  async function load(container) {
    const message = container.querySelector("[data-series-message]");
    if (typeof Chart === "undefined") {
      // Chart.js comes from `npm ci` at install time; a machine without npm serves the pages without it.
      if (message) message.textContent = "Charts are unavailable: Chart.js is not installed (see docs/dashboard.md).";
      container.dataset.state = "error";
      return;
    }
    const params = new URLSearchParams({ scope: container.dataset.scope, key: container.dataset.key,
                                         start: container.dataset.start,
                                         end: container.dataset.end, points: container.dataset.points });
    try {
      const response = await fetch(`/api/v1/telemetry/?${params}`, { credentials: "same-origin", headers: { Accept: "application/json" } });
      const body = await response.json();
      if (!response.ok) throw new Error(body.detail || `HTTP ${response.status}`);
      const range = { min: Date.parse(container.dataset.start), max: Date.parse(container.dataset.end) };
      const missing = [];
      let drawn = 0;
      container.querySelectorAll("canvas[data-chart]").forEach((canvas) => {
        if (draw(canvas, body, range) > 0) {
          drawn += 1;
          return;
        }
        // Empty axes say less than a sentence does: the chart says "no data" in place of its canvas.
        canvas.hidden = true;
        const figure = canvas.closest("figure");
        if (figure && figure !== container && !figure.hasAttribute("data-series")) {
          figure.dataset.state = "empty";
          const said = document.createElement("p");
          said.className = "no-data";
          said.dataset.testid = "no-data";
          said.textContent = "No data in this range.";
          figure.append(said);
          missing.push(figure.querySelector("figcaption").textContent.trim());
        }
      });
      if (message && drawn === 0) message.textContent = "No telemetry in this range yet.";
      else if (message && missing.length) message.textContent = `No data in this range for: ${missing.join(", ")}.`;
      container.dataset.state = drawn === 0 ? "empty" : "ready";
    } catch (error) {
      if (message) message.textContent = `Could not load the series: ${error.message}`;
      container.dataset.state = "error";
    }
  }

  document.querySelectorAll("[data-series]").forEach(load);
})();
