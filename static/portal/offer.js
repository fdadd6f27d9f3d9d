// The offer page's chart: credentials issued and redemptions per day (data from json_script).
(function () {
  "use strict";
  var canvas = document.getElementById("offer-activity");
  var source = document.getElementById("offer-activity-data");
  if (!canvas || !source || typeof Chart === "undefined") { return; }
  var data = JSON.parse(source.textContent);
  new Chart(canvas, {
    type: "bar",
    data: {
      labels: data.days,
      datasets: [
        { label: "Issued", data: data.issued, backgroundColor: "#1e88e5" },
        { label: "Redeemed", data: data.redeemed, backgroundColor: "#2e7d32" }
      ]
    },
    options: {
      responsive: true,
      maintainAspectRatio: false,
      scales: { y: { beginAtZero: true, ticks: { precision: 0 } } },
      plugins: { legend: { position: "bottom" } }
    }
  });
})();
