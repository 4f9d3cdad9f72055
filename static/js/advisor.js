// The threshold advisor's curve: expected accuracy (y) against the share of
// frames escalated (x), one point per threshold, from the JSON the page embeds
// (#advisor-data, the service's figures); the recommended point is drawn on top.
// When drawn, the figure carries data-state="ready" and data-points.
(function () {
  "use strict";

  const source = document.getElementById("advisor-data");
  const canvas = document.querySelector("canvas[data-advisor]");
  if (!source || !canvas || typeof Chart === "undefined") return;
  const data = JSON.parse(source.textContent);
  const figure = canvas.closest("figure");
  const pct = (v) => `${Math.round(v * 1000) / 10} %`;

  const datasets = [{
    type: "line", label: "thresholds", data: data.points, borderColor: "#2563eb", backgroundColor: "#2563eb",
    pointRadius: 1.5, borderWidth: 2, tension: 0,
  }];
  if (data.pick) {
    datasets.push({
      type: "scatter", label: `recommended (${data.pick.t.toFixed(2)})`, data: [data.pick],
      borderColor: "#b45309", backgroundColor: "#f59e0b", pointRadius: 8, pointHoverRadius: 9, pointStyle: "rectRot",
    });
  }

  new Chart(canvas, {
    data: { datasets },
    options: {
      responsive: true, maintainAspectRatio: false, animation: false, parsing: false,
      scales: {
        x: { type: "linear", min: 0, max: 1, title: { display: true, text: "escalation rate" }, ticks: { callback: pct } },
        y: { type: "linear", suggestedMax: 1, title: { display: true, text: "expected accuracy" }, ticks: { callback: pct } },
      },
      plugins: {
        tooltip: { callbacks: { label: (item) => `threshold ${item.raw.t.toFixed(2)}: escalates ${pct(item.raw.x)}, accuracy ${pct(item.raw.y)}` } },
      },
    },
  });
  figure.dataset.points = String(data.points.length);
  figure.dataset.state = "ready";
})();
