// Live throughput and failure-rate chart from the dashboard's own samples.
// Loaded as a file (the page's Content-Security-Policy forbids inline scripts).
(function () {
  "use strict";
  var el = document.getElementById("chart");
  if (!el || typeof uPlot === "undefined") return;
  var url = el.getAttribute("data-samples");
  var xs = [], thr = [], fail = [];
  var last = 0;
  var opts = {
    width: Math.max(320, el.clientWidth - 16),
    height: 260,
    series: [
      {},
      { label: "jobs finished / s", stroke: "#3559e0", width: 2, scale: "rate" },
      { label: "failure rate %", stroke: "#b42318", width: 2, scale: "pct" },
    ],
    axes: [{}, { scale: "rate" }, { scale: "pct", side: 1, grid: { show: false } }],
    scales: { pct: { range: [0, 100] } },
  };
  var plot = new uPlot(opts, [xs, thr, fail], el);
  function poll() {
    fetch(url + "?after=" + last, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (data) {
        if (data) {
          data.series.forEach(function (p) {
            xs.push(p.t); thr.push(p.throughput); fail.push(p.failure_rate * 100); last = p.t;
          });
          var keep = 900;
          if (xs.length > keep) { xs.splice(0, xs.length - keep); thr.splice(0, thr.length - keep); fail.splice(0, fail.length - keep); }
          plot.setData([xs, thr, fail]);
          el.setAttribute("data-points", String(xs.length));
        }
        setTimeout(poll, ((data && data.every) || 2) * 1000);
      })
      .catch(function () { setTimeout(poll, 5000); });
  }
  window.addEventListener("resize", function () { plot.setSize({ width: Math.max(320, el.clientWidth - 16), height: 260 }); });
  poll();
})();
