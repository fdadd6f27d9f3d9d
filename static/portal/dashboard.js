// Draws the dashboard's per-day charts from the JSON the page carries in
// <script type="application/json" id="dashboard-data"> (no inline script: a strict CSP can apply).
(function () {
  "use strict";
  var source = document.getElementById("dashboard-data");
  if (!source || typeof Chart === "undefined") { return; }
  var data = JSON.parse(source.textContent);
  var styles = getComputedStyle(document.documentElement);
  var colours = {
    redemptions: styles.getPropertyValue("--pico-primary").trim() || "#0172ad",
    issuances: styles.getPropertyValue("--portal-ok").trim() || "#2e7d32",
    points_redeemed: styles.getPropertyValue("--portal-warn").trim() || "#b26a00",
  };
  var charts = [
    ["chart-redemptions", "redemptions", "Redemptions"],
    ["chart-issuances", "issuances", "Credentials issued"],
    ["chart-points", "points_redeemed", "Points redeemed"],
  ];
  charts.forEach(function (chart) {
    var canvas = document.getElementById(chart[0]);
    if (!canvas) { return; }
    new Chart(canvas, {
      type: "bar",
      data: {
        labels: data.days,
        datasets: [{ label: chart[2], data: data[chart[1]], backgroundColor: colours[chart[1]] }],
      },
      options: {
        responsive: true,
        animation: false,
        plugins: { legend: { display: true }, title: { display: false } },
        scales: { y: { beginAtZero: true, ticks: { precision: 0 } } },
      },
    });
  });
  // Tells the browser tests (and anyone curious) the charts were drawn.
  document.documentElement.dataset.chartsDrawn = String(charts.length);
})();
