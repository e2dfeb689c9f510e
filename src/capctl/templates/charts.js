/* Charts of the capctl pages (load-test report, dashboard), drawn with uPlot.
 *
 * A page embeds its chart data as JSON in <script type="application/json" id="chart-data">:
 * {"<name>": spec, ...}, and an element <div data-chart="<name>"> for each. A spec:
 *   {title, kind: "time" | "category", x: [epoch seconds | index], xLabels: [..] (category),
 *    series: [{label, values: [number|null], color, style: "line" | "bars" | "area", scale: "y" | "y2"}],
 *    yUnit, y2Unit, yMin, yMax, thresholds: [{label, value, color, scale}],
 *    bands: [{from, to, label}] (x values: shaded spans such as injected faults),
 *    optional: yLog (true: logarithmic y, values <= 0 not drawn; for latencies far below a limit),
 *    timeZone: "UTC" (time: axis and tooltip in that zone instead of the viewer's),
 *    xLabelEvery: n (category: label every n-th category only; the tooltip still names each),
 *    xThresholds: [{label, value, color}] (vertical lines at an x value, e.g. a latency limit
 *    on a histogram whose x is the bucket index: value 3.5 = between buckets 3 and 4)}
 * Drawn charts get data-points="N" (the non-null points plotted) so a test can tell that a chart
 * has data; the uPlot instances are kept in window.capctlCharts.instances by name.
 * Drag to zoom on x, double-click to reset; hovering shows the values under the cursor.
 */
(function () {
  "use strict";
  var PALETTE = ["#1c7ed6", "#2f9e44", "#e8590c", "#c92a2a", "#7048e8", "#0c8599", "#e67700", "#495057"];

  function fmt(v, unit) {
    if (v == null || Number.isNaN(v)) return "–";
    var abs = Math.abs(v);
    var s = abs >= 100 ? v.toFixed(0) : abs >= 10 ? v.toFixed(1) : v.toFixed(2);
    return s.replace(/\.0+$/, "").replace(/(\.\d*?)0+$/, "$1") + (unit || "");
  }

  function tooltipPlugin(spec) {
    var tip;
    return {
      hooks: {
        init: function (u) {
          tip = document.createElement("div");
          tip.className = "chart-tooltip";
          tip.style.display = "none";
          u.over.appendChild(tip);
          u.over.addEventListener("mouseleave", function () { tip.style.display = "none"; });
        },
        setCursor: function (u) {
          var i = u.cursor.idx;
          if (i == null) { tip.style.display = "none"; return; }
          var head = spec.kind === "category" ? (spec.xLabels || [])[i] : new Date(u.data[0][i] * 1000).toLocaleTimeString([], spec.timeZone ? { timeZone: spec.timeZone, timeZoneName: "short" } : {});
          var rows = [head];
          for (var s = 1; s < u.series.length; s++) {
            var ser = spec.series[s - 1];
            rows.push(ser.label + ": " + fmt(u.data[s][i], ser.scale === "y2" ? spec.y2Unit : spec.yUnit));
          }
          tip.textContent = "";
          rows.forEach(function (line, n) {
            var div = document.createElement("div");
            if (n === 0) div.className = "chart-tooltip-head";
            div.textContent = line;
            tip.appendChild(div);
          });
          tip.style.display = "block";
          var left = u.cursor.left, top = u.cursor.top;
          tip.style.left = Math.min(left + 12, u.over.clientWidth - tip.offsetWidth) + "px";
          tip.style.top = Math.max(top - tip.offsetHeight - 8, 0) + "px";
        }
      }
    };
  }

  function overlayPlugin(spec) {
    // Threshold lines (e.g. an alarm or an Artillery `ensure` limit) and shaded bands (faults).
    return {
      hooks: {
        draw: function (u) {
          var ctx = u.ctx;
          ctx.save();
          // A label that would run into the one before it (faults seconds apart) goes a line lower.
          var labelEnds = [];
          (spec.bands || []).forEach(function (b) {
            var x0 = u.valToPos(b.from, "x", true), x1 = u.valToPos(b.to, "x", true);
            ctx.fillStyle = "rgba(201, 42, 42, 0.12)";
            ctx.fillRect(x0, u.bbox.top, Math.max(x1 - x0, 2), u.bbox.height);
            if (b.label) {
              ctx.fillStyle = "#c92a2a";
              ctx.font = 11 * devicePixelRatio + "px sans-serif";
              var x = x0 + 3, line = 0;
              while (labelEnds[line] !== undefined && labelEnds[line] > x) line++;
              labelEnds[line] = x + ctx.measureText(b.label).width + 4 * devicePixelRatio;
              ctx.fillText(b.label, x, u.bbox.top + (12 + 13 * line) * devicePixelRatio);
            }
          });
          (spec.thresholds || []).forEach(function (t) {
            var y = u.valToPos(t.value, t.scale || "y", true);
            if (y < u.bbox.top || y > u.bbox.top + u.bbox.height) return;
            ctx.strokeStyle = t.color || "#c92a2a";
            ctx.setLineDash([6 * devicePixelRatio, 4 * devicePixelRatio]);
            ctx.lineWidth = devicePixelRatio;
            ctx.beginPath();
            ctx.moveTo(u.bbox.left, y);
            ctx.lineTo(u.bbox.left + u.bbox.width, y);
            ctx.stroke();
            ctx.setLineDash([]);
            ctx.fillStyle = t.color || "#c92a2a";
            ctx.font = 11 * devicePixelRatio + "px sans-serif";
            ctx.textAlign = "right";
            ctx.fillText(t.label, u.bbox.left + u.bbox.width - 4, y - 4 * devicePixelRatio);
          });
          (spec.xThresholds || []).forEach(function (t) {
            var x = u.valToPos(t.value, "x", true);
            if (x < u.bbox.left || x > u.bbox.left + u.bbox.width) return;
            ctx.strokeStyle = t.color || "#c92a2a";
            ctx.setLineDash([6 * devicePixelRatio, 4 * devicePixelRatio]);
            ctx.lineWidth = devicePixelRatio;
            ctx.beginPath();
            ctx.moveTo(x, u.bbox.top);
            ctx.lineTo(x, u.bbox.top + u.bbox.height);
            ctx.stroke();
            ctx.setLineDash([]);
            ctx.fillStyle = t.color || "#c92a2a";
            ctx.font = 11 * devicePixelRatio + "px sans-serif";
            ctx.textAlign = "right";
            ctx.fillText(t.label, x - 4 * devicePixelRatio, u.bbox.top + 12 * devicePixelRatio);
          });
          ctx.restore();
        }
      }
    };
  }

  function logLabel(v) {
    // 1, 2, 5, 10, 20, 50 …: every tick of a log axis labelled would be unreadable.
    var m = v / Math.pow(10, Math.floor(Math.log10(v) + 1e-9));
    return [1, 2, 5].some(function (k) { return Math.abs(m - k) < 1e-6; }) ? fmt(v, "") : "";
  }

  function logRange(spec, thresholdMax) {
    return function (u, min, max) {
      var lo = spec.yMin != null ? spec.yMin : Math.max(min == null ? 1 : min, 0.1);
      var hi = spec.yMax != null ? spec.yMax : Math.max(max == null ? 10 : max, thresholdMax, lo * 10);
      return uPlot.rangeLog(lo, hi, 10, true);
    };
  }

  function options(spec, width) {
    var hasY2 = spec.series.some(function (s) { return s.scale === "y2"; });
    var thresholdMax = Math.max.apply(null, [0].concat((spec.thresholds || []).map(function (t) { return t.value * 1.1; })));
    var series = [{}].concat(spec.series.map(function (s, i) {
      var color = s.color || PALETTE[i % PALETTE.length];
      var out = { label: s.label, stroke: color, width: 2, scale: s.scale || "y", spanGaps: false,
                  value: function (u, v) { return fmt(v, s.scale === "y2" ? spec.y2Unit : spec.yUnit); } };
      if (s.style === "bars") {
        out.paths = uPlot.paths.bars({ size: [0.7, 40] });
        out.fill = color + "cc";
        out.width = 0;
      } else if (s.style === "area") {
        out.fill = color + "33";
      }
      return out;
    }));
    var axes = [
      spec.kind === "category"
        ? { values: function (u, splits) {
            var every = spec.xLabelEvery || 1;
            return splits.map(function (i) { return i % every === 0 ? (spec.xLabels || [])[i] || "" : ""; });
          } }
        : {},
      { label: spec.yUnit ? spec.yUnit.trim() : "", size: 60,
        values: function (u, splits) { return splits.map(function (v) { return spec.yLog ? logLabel(v) : fmt(v, ""); }); } }
    ];
    if (hasY2) axes.push({ scale: "y2", side: 1, grid: { show: false }, label: (spec.y2Unit || "").trim(), size: 60 });
    var yRange = function (u, min, max) {
      var lo = spec.yMin != null ? spec.yMin : Math.min(0, min == null ? 0 : min);
      var hi = spec.yMax != null ? spec.yMax : Math.max(max == null ? 1 : max * 1.1, thresholdMax, lo + 1);
      return [lo, hi];
    };
    var scales = { x: { time: spec.kind !== "category" },
                   y: spec.yLog ? { distr: 3, log: 10, range: logRange(spec, thresholdMax) } : { range: yRange } };
    if (spec.kind === "category") {
      scales.x.range = function (u, min, max) { return [min - 0.5, max + 0.5]; };
      axes[0].splits = function () { return spec.x; };
    }
    if (hasY2) scales.y2 = { range: function (u, min, max) { return [0, Math.max(max == null ? 1 : max * 1.1, 1)]; } };
    var zoned = spec.timeZone ? { tzDate: function (ts) { return uPlot.tzDate(new Date(ts * 1000), spec.timeZone); } } : {};
    return Object.assign(zoned, {
      title: spec.title, width: width, height: spec.height || 260, series: series, axes: axes, scales: scales,
      cursor: { drag: { x: true, y: false } }, legend: { live: true },
      plugins: [tooltipPlugin(spec), overlayPlugin(spec)]
    });
  }

  function countPoints(spec) {
    var n = 0;
    spec.series.forEach(function (s) { s.values.forEach(function (v) { if (v != null) n++; }); });
    return n;
  }

  function renderAll() {
    var source = document.getElementById("chart-data");
    if (!source) return;
    var specs = JSON.parse(source.textContent);
    var instances = {};
    document.querySelectorAll("[data-chart]").forEach(function (el) {
      var spec = specs[el.getAttribute("data-chart")];
      if (!spec || !spec.series) return; // an HTML chart (table, heatmap) draws itself
      var width = Math.max(el.clientWidth || 0, 320);
      var data = [spec.x].concat(spec.series.map(function (s) {
        // A log scale has no place for 0: such a point is left out rather than drawn at -infinity.
        return spec.yLog && (s.scale || "y") === "y"
          ? s.values.map(function (v) { return v != null && v <= 0 ? null : v; }) : s.values;
      }));
      el.textContent = "";
      instances[el.getAttribute("data-chart")] = new uPlot(options(spec, width), data, el);
      el.setAttribute("data-points", String(countPoints(spec)));
    });
    window.capctlCharts.instances = instances;
  }

  window.capctlCharts = { render: renderAll, instances: {} };
  document.addEventListener("DOMContentLoaded", renderAll);
})();
