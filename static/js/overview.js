// The fleet overview's two charts, drawn from the data the page carries
// (#fleet-charts-data): no request per site, whatever the fleet's size. A chart
// with nothing to draw hides its canvas and shows its "No data" sentence; each
// figure carries data-points (how many points it drew) for tests and people.
(function () {
  "use strict";

  const data = JSON.parse(document.getElementById("fleet-charts-data").textContent);
  const hour = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit" });

  function draw(name, points, config) {
    const figure = document.querySelector(`[data-testid="chart-${name}"]`);
    figure.dataset.points = String(points);
    if (!points || typeof Chart === "undefined") {
      figure.querySelector("canvas").hidden = true;
      figure.querySelector("[data-empty]").hidden = false;
      return;
    }
    new Chart(figure.querySelector("canvas"), { ...config, options: { animation: false, maintainAspectRatio: false, ...config.options } });
  }

  const activity = data.activity;
  draw("fleet-activity", activity.length, {
    type: "bar",
    data: {
      labels: activity.map((p) => hour.format(new Date(p.t))),
      datasets: [
        { type: "bar", label: "frames/s", data: activity.map((p) => p.frames_per_s), backgroundColor: "#2563eb", yAxisID: "y" },
        { type: "line", label: "p95 latency (ms)", data: activity.map((p) => p.latency_p95_ms), borderColor: "#b45309",
          backgroundColor: "#b45309", yAxisID: "ms", spanGaps: true, pointRadius: 2 },
      ],
    },
    options: { scales: { y: { beginAtZero: true, title: { display: true, text: "frames/s" } },
                         ms: { beginAtZero: true, position: "right", grid: { drawOnChartArea: false }, title: { display: true, text: "ms" } } } },
  });

  const versions = data.versions;
  draw("fleet-versions", versions.length, {
    type: "bar",
    data: { labels: versions.map((v) => v.label),
            datasets: [{ label: "devices", data: versions.map((v) => v.devices), backgroundColor: "#059669" }] },
    options: { indexAxis: "y", plugins: { legend: { display: false } }, scales: { x: { beginAtZero: true, ticks: { precision: 0 } } } },
  });
})();
