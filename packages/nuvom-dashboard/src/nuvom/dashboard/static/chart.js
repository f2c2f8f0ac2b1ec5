// Live throughput and failure-rate chart from the dashboard's own samples.
// Loaded as a file (the page's Content-Security-Policy forbids inline scripts).
(function () {
  "use strict";
  var el = document.getElementById("chart");
  if (!el || typeof uPlot === "undefined") return;
  var url = el.getAttribute("data-samples");
  var xs = [], thr = [], fail = [];
  var last = 0;
  var FONT = "12px system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif";
  var GAP = 24; // px between two time labels, at least

  // The x axis shows one-line labels of one width (HH:MM:SS), and uPlot keeps
  // ticks at least that wide plus a gap apart: labels cannot overlap at any width.
  var measure = document.createElement("canvas").getContext("2d");
  measure.font = FONT;
  var labelWidth = Math.ceil(measure.measureText("00:00:00").width);
  function two(n) { return (n < 10 ? "0" : "") + n; }
  function clock(ts) {
    var d = new Date(ts * 1000);
    return two(d.getHours()) + ":" + two(d.getMinutes()) + ":" + two(d.getSeconds());
  }
  function fmtRate(v) { return v == null ? "–" : (v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2)); }
  function fmtPct(v) { return v == null ? "– (too few jobs finished)" : v.toFixed(1) + " %"; }

  var legendThr = document.getElementById("legend-throughput");
  var legendFail = document.getElementById("legend-failure");
  var legendAt = document.getElementById("legend-at");
  function showLegend(i, hovering) {
    if (i == null || i < 0 || i >= xs.length) return;
    if (legendThr) legendThr.textContent = fmtRate(thr[i]);
    if (legendFail) legendFail.textContent = fmtPct(fail[i]);
    if (legendAt) legendAt.textContent = (hovering ? "at " : "latest, ") + clock(xs[i]);
  }

  function width() { return Math.max(280, el.clientWidth - 16); }
  var opts = {
    width: width(),
    height: 260,
    legend: { show: false },  // ours, above the chart: it shows the latest values without hovering
    series: [
      {},
      { label: "jobs finished / s", stroke: "#3559e0", width: 2, scale: "rate" },
      { label: "failure rate %", stroke: "#b42318", width: 2, scale: "pct", spanGaps: false },
    ],
    axes: [
      {
        font: FONT,
        space: labelWidth + GAP,
        // Whole seconds and up: a label names a second, never two ticks the same one.
        incrs: [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400],
        values: function (u, splits) { return splits.map(clock); },
      },
      { scale: "rate", font: FONT },
      { scale: "pct", side: 1, font: FONT, grid: { show: false }, values: function (u, s) { return s.map(function (v) { return v + " %"; }); } },
    ],
    scales: { pct: { range: [0, 100] } },
    hooks: {
      setCursor: [function (u) {
        var i = u.cursor.idx;
        showLegend(i == null ? xs.length - 1 : i, i != null);
      }],
    },
  };
  var plot = new uPlot(opts, [xs, thr, fail], el);
  el.nuvomChart = plot; // for the browser tests, which measure the axis labels

  function poll() {
    fetch(url + "?after=" + last, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (data) {
        if (data) {
          data.series.forEach(function (p) {
            xs.push(p.t); thr.push(p.throughput);
            fail.push(p.failure_rate == null ? null : p.failure_rate * 100);
            last = p.t;
          });
          var keep = 900;
          if (xs.length > keep) { xs.splice(0, xs.length - keep); thr.splice(0, thr.length - keep); fail.splice(0, fail.length - keep); }
          plot.setData([xs, thr, fail]);
          if (plot.cursor.idx == null) showLegend(xs.length - 1, false);
          el.setAttribute("data-points", String(xs.length));
        }
        setTimeout(poll, ((data && data.every) || 2) * 1000);
      })
      .catch(function () { setTimeout(poll, 5000); });
  }
  window.addEventListener("resize", function () { plot.setSize({ width: width(), height: 260 }); });
  poll();
})();
