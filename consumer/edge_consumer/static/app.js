// edge fleet dashboard: one EventSource (/events) pushes the whole fleet once a second; the
// table keeps one <tr> per device and rewrites only the cells whose text changed, so a
// 1,000-device fleet costs a few hundred DOM writes per second, not a re-render.
"use strict";

(() => {
  const HISTORY_MINUTES = 10;
  const HISTORY_REFRESH_MS = 5000;
  const STALE_MS = 4000;
  const DEVICE_ANOMALIES = 200; // a device's findings fetched for its charts' markers
  const DEVICE_ANOMALIES_LISTED = 10; // and listed under them

  const $ = (id) => document.getElementById(id);
  const int = new Intl.NumberFormat("en-US");
  const fixed = (digits) => (v) => (v === null || v === undefined ? "–" : Number(v).toFixed(digits));

  function age(seconds) {
    if (seconds === null || seconds === undefined) return "never";
    if (seconds < 0) seconds = 0;
    if (seconds < 10) return seconds.toFixed(1) + " s";
    if (seconds < 120) return Math.round(seconds) + " s";
    if (seconds < 7200) return Math.round(seconds / 60) + " min";
    if (seconds < 172800) return Math.round(seconds / 3600) + " h";
    return Math.round(seconds / 86400) + " d";
  }

  // A Unix time as the browser's local clock time (what the "updated" line shows too).
  function clockTime(ts) {
    return new Date(ts * 1000).toLocaleTimeString();
  }

  function rate(v) {
    if (!v) return "0";
    return v < 10 ? v.toFixed(2) : v.toFixed(1);
  }

  // online: the rule holds; offline: the device said so (or its will); silent: status online
  // but not heard for --offline-after; unknown: no status seen yet.
  function stateOf(d) {
    if (d.online) return "online";
    if (d.status === "offline") return "offline";
    if (d.status === "online") return "silent";
    return "unknown";
  }
  const STATE_RANK = { online: 0, silent: 1, unknown: 2, offline: 3 };
  const STATE_TEXT = {
    online: () => "online",
    silent: () => "silent",
    offline: () => "offline",
    unknown: (d) => (d.received ? "no status" : "never seen"),
  };

  // Table columns: key into the device object, header, text renderer, sort value.
  const COLUMNS = [
    { key: "state", width: 96, label: "Status", text: (d) => STATE_TEXT[d.state](d), sort: (d) => STATE_RANK[d.state] },
    { key: "name", width: 110, label: "Name", text: (d) => d.name || "–" },
    { key: "id", width: 150, label: "Device ID", text: (d) => d.id, mono: true },
    { key: "arch", width: 70, label: "Arch", text: (d) => d.arch || "–" },
    { key: "last_seen", width: 86, label: "Last seen", num: true, text: (d) => (d.last_seen === null ? "never" : age(now - d.last_seen)), sort: (d) => (d.last_seen === null ? -Infinity : d.last_seen), warn: (d) => d.state === "silent" },
    { key: "rate", width: 70, label: "msg/s", num: true, text: (d) => rate(d.rate) },
    { key: "received", width: 92, label: "Received", num: true, text: (d) => int.format(d.received) },
    // "–" while detection is off: 0 would claim the device was checked.
    { key: "anomalies", width: 88, label: "Anomalies", num: true, text: (d) => (anomalyDetection || d.anomalies ? int.format(d.anomalies) : "–"), warn: (d) => d.anomalies > 0, warnClass: "alert" },
    { key: "gaps", width: 64, label: "Gaps", num: true, text: (d) => int.format(d.gaps), warn: (d) => d.gaps > 0 },
    { key: "duplicates", width: 64, label: "Dups", num: true, text: (d) => int.format(d.duplicates), warn: (d) => d.duplicates > 0 },
    { key: "invalid", width: 70, label: "Invalid", num: true, text: (d) => int.format(d.invalid), warn: (d) => d.invalid > 0 },
    { key: "temp", width: 76, label: "Temp °C", num: true, text: (d) => fixed(1)(d.temp) },
    { key: "humidity", width: 70, label: "Hum %", num: true, text: (d) => fixed(1)(d.humidity) },
    { key: "co", width: 70, label: "CO", num: true, text: (d) => fixed(4)(d.co) },
    { key: "lpg", width: 70, label: "LPG", num: true, text: (d) => fixed(4)(d.lpg) },
    { key: "smoke", width: 70, label: "Smoke", num: true, text: (d) => fixed(4)(d.smoke) },
    { key: "light", width: 62, label: "Light", flag: true, text: (d) => (d.light === null ? "–" : d.light ? "on" : "off") },
    { key: "motion", width: 68, label: "Motion", flag: true, text: (d) => (d.motion === null ? "–" : d.motion ? "yes" : "no") },
  ];

  let now = Date.now() / 1000; // the server's clock, from the latest snapshot
  let lastSnapshotAt = 0;
  let offlineAfter = 15;
  let devices = new Map(); // device id -> device object (the latest snapshot)
  let view = []; // the devices shown, filtered and sorted
  let sortKey = "name";
  let sortDir = 1;
  let filterText = "";
  let selected = null;
  let anomalyDetection = false; // the consumer runs the detectors (--anomalies)
  let storeOn = false; // and keeps readings (--store)

  // --- table: a virtual window of pooled rows ---------------------------------------------
  // Only the rows in (and just around) the viewport exist; scrolling and snapshots reuse them
  // and rewrite only cells whose text changed. Cost per update: the visible rows, not the fleet.

  const BUFFER_ROWS = 8;
  let rowHeight = 29; // measured from the first rendered row
  let rowMeasured = false;
  const pool = []; // {tr, cells, texts, warns, id}
  let renderQueued = false;

  function buildHead() {
    const head = $("head");
    const cols = $("cols");
    for (const col of COLUMNS) {
      const c = document.createElement("col");
      c.style.width = col.width + "px";
      cols.appendChild(c);
      const th = document.createElement("th");
      th.textContent = col.label;
      th.dataset.key = col.key;
      if (col.num) th.className = "num";
      th.title = "Sort by " + col.label.toLowerCase();
      th.addEventListener("click", () => {
        sortDir = sortKey === col.key ? -sortDir : col.num ? -1 : 1;
        sortKey = col.key;
        markSort();
        refreshView();
      });
      head.appendChild(th);
    }
    markSort();
  }

  function markSort() {
    for (const th of $("head").children) {
      if (th.dataset.key === sortKey) th.setAttribute("aria-sort", sortDir > 0 ? "ascending" : "descending");
      else th.removeAttribute("aria-sort");
    }
  }

  function makeRow() {
    const tr = document.createElement("tr");
    const cells = COLUMNS.map((col) => {
      const td = document.createElement("td");
      if (col.num) td.className = "num";
      if (col.mono) td.className = "mono";
      if (col.key === "state") {
        const dot = document.createElement("span");
        dot.className = "dot";
        td.append(dot, document.createTextNode(""));
      } else if (col.flag) {
        const flag = document.createElement("span");
        flag.className = "flag";
        td.appendChild(flag);
      }
      tr.appendChild(td);
      return td;
    });
    return { tr, cells, texts: new Array(COLUMNS.length).fill(null), warns: [], id: null };
  }

  function fillRow(row, d) {
    if (row.id !== d.id) {
      row.id = d.id;
      row.tr.dataset.id = d.id;
    }
    if (row.tr.dataset.state !== d.state) {
      row.tr.dataset.state = d.state;
      row.tr.classList.toggle("offline", d.state !== "online");
    }
    row.tr.classList.toggle("selected", d.id === selected);
    for (let i = 0; i < COLUMNS.length; i++) {
      const col = COLUMNS[i];
      const text = col.text(d);
      if (row.texts[i] !== text) {
        row.texts[i] = text;
        const td = row.cells[i];
        if (col.key === "state") {
          td.firstChild.className = "dot " + d.state;
          td.lastChild.data = text;
        } else if (col.flag) {
          td.firstChild.textContent = text;
          td.firstChild.className = text === "on" || text === "yes" ? "flag on" : "flag";
        } else {
          td.textContent = text;
        }
      }
      if (col.warn) {
        const warn = col.warn(d);
        if (row.warns[i] !== warn) {
          row.warns[i] = warn;
          row.cells[i].classList.toggle(col.warnClass || "warn", warn);
        }
      }
    }
  }

  function render() {
    renderQueued = false;
    const wrap = $("table-wrap");
    const first = Math.max(0, Math.floor(wrap.scrollTop / rowHeight) - BUFFER_ROWS);
    const wanted = Math.ceil(wrap.clientHeight / rowHeight) + 2 * BUFFER_ROWS;
    const last = Math.min(view.length, first + wanted);
    const tbody = $("rows");
    while (pool.length < last - first) {
      const row = makeRow();
      pool.push(row);
      tbody.insertBefore(row.tr, $("pad-bottom"));
    }
    for (let i = 0; i < pool.length; i++) {
      const row = pool[i];
      const d = view[first + i];
      if (first + i < last && d) {
        if (row.tr.hidden) row.tr.hidden = false;
        fillRow(row, d);
      } else if (!row.tr.hidden) {
        row.tr.hidden = true;
        row.id = null;
        delete row.tr.dataset.id;
      }
    }
    // Spacers stand in for the rows above and below the window, so the scrollbar is true.
    $("pad-top").firstChild.style.height = first * rowHeight + "px";
    $("pad-bottom").firstChild.style.height = Math.max(0, view.length - last) * rowHeight + "px";
    if (!rowMeasured && pool.length && !pool[0].tr.hidden) {
      rowMeasured = true; // once: reading layout every frame would force a reflow each time
      const height = pool[0].tr.getBoundingClientRect().height;
      if (height && Math.abs(height - rowHeight) > 0.5) {
        rowHeight = height;
        queueRender();
      }
    }
  }

  function queueRender() {
    if (!renderQueued) {
      renderQueued = true;
      requestAnimationFrame(render);
    }
  }

  const collator = new Intl.Collator(undefined, { numeric: true }); // pi-2 before pi-10

  // Sort keys are computed once per device, not once per comparison.
  function sortedView(list) {
    const col = COLUMNS.find((c) => c.key === sortKey);
    const value = col.sort || ((d) => d[sortKey]);
    const keyed = list.map((d) => {
      const v = value(d);
      return { d, v: v === undefined ? null : v, name: d.name || d.id };
    });
    keyed.sort((a, b) => {
      if (a.v === null || b.v === null) {
        if (a.v !== b.v) return a.v === null ? 1 : -1; // missing values last, either way
      } else if (a.v !== b.v) {
        return (typeof a.v === "string" ? collator.compare(a.v, b.v) : a.v - b.v) * sortDir;
      }
      return collator.compare(a.name, b.name) * sortDir || (a.d.id < b.d.id ? -1 : 1);
    });
    return keyed.map((k) => k.d);
  }

  function haystack(d) {
    if (d.haystack === null) {
      const flags = d.anomalies > 0 ? "anomalies" : "";
      d.haystack = [d.name, d.id, d.arch, d.host, STATE_TEXT[d.state](d), flags].join(" ").toLowerCase();
    }
    return d.haystack;
  }

  // Filter and sort every device (cheap: no DOM), then draw the visible window.
  function refreshView() {
    const all = Array.from(devices.values());
    view = sortedView(filterText === "" ? all : all.filter((d) => haystack(d).includes(filterText)));
    $("shown").textContent = `${int.format(view.length)} of ${int.format(all.length)} devices`;
    const empty = $("empty");
    empty.hidden = view.length > 0;
    empty.textContent = all.length ? "No device matches the filter." : "Waiting for telemetry…";
    queueRender();
  }

  // --- snapshot ---------------------------------------------------------------------------

  function setText(id, text) {
    const el = $(id);
    if (el.textContent !== text) el.textContent = text;
  }

  function pill(id, ok, text) {
    const el = $(id);
    el.className = "pill " + (ok === null ? "pill-wait" : ok ? "pill-ok" : "pill-bad");
    el.textContent = text;
  }

  function applySnapshot(snap) {
    now = snap.time;
    lastSnapshotAt = Date.now();
    offlineAfter = snap.offline_after;
    anomalyDetection = Boolean(snap.anomaly_detection);
    storeOn = Boolean(snap.store);
    const at = {};
    snap.columns.forEach((name, i) => (at[name] = i));
    const next = new Map();
    for (const v of snap.devices) {
      // One object literal: every device gets the same hidden class (fast in V8).
      const d = {
        id: v[at.id], name: v[at.name], arch: v[at.arch], host: v[at.host], online: v[at.online],
        status: v[at.status], last_seen: v[at.last_seen], rate: v[at.rate],
        received: v[at.received], valid: v[at.valid], invalid: v[at.invalid], gaps: v[at.gaps],
        duplicates: v[at.duplicates], resets: v[at.resets], overflow: v[at.overflow],
        reconnects: v[at.reconnects], anomalies: v[at.anomalies] ?? 0, temp: v[at.temp], humidity: v[at.humidity], co: v[at.co],
        lpg: v[at.lpg], smoke: v[at.smoke], light: v[at.light], motion: v[at.motion],
        state: "", haystack: null,
      };
      d.state = stateOf(d);
      next.set(d.id, d);
    }
    devices = next;
    refreshView();

    const t = snap.totals;
    setText("total-online", int.format(t.online));
    setText("total-devices", `of ${int.format(t.devices)} devices`);
    setText("total-offline", int.format(t.offline));
    $("total-offline").className = "value " + (t.offline ? "bad" : "zero");
    setText("offline-rule", `after ${offlineAfter} s of silence`);
    setText("total-rate", rate(t.rate));
    setText("total-received", int.format(t.received));
    setText("total-valid", `${int.format(t.valid)} valid`);
    setText("total-gaps", int.format(t.gaps));
    setText("total-duplicates", int.format(t.duplicates));
    setText("total-invalid", int.format(t.invalid));
    const found = t.anomalies ?? 0;
    setText("total-anomalies", anomalyDetection || found ? int.format(found) : "off");
    $("total-anomalies").className = "value " + (found ? "warn" : "zero");
    setText("anomaly-mode", anomalyDetection ? (storeOn ? "found · stored" : "found since start") : "detection off");
    renderAnomalyPanel(snap.recent_anomalies || [], found);
    const ms = (v) => (v === null ? "–" : v < 10 ? v.toFixed(1) : Math.round(v).toString());
    setText("total-latency", `${ms(t.latency_p50_ms)} / ${ms(t.latency_p99_ms)}`);
    setText("broker-clients", t.broker_clients === null ? "–" : int.format(t.broker_clients));
    setText("broker-state", t.broker_up ? "clients · $SYS live" : "clients · no $SYS data");
    pill("broker", t.connected, t.connected ? "broker connected" : "broker disconnected");
    setText("updated", "updated " + new Date(now * 1000).toLocaleTimeString());
    if (selected && devices.has(selected)) renderFacts(devices.get(selected));
  }

  // --- anomalies panel ----------------------------------------------------------------------

  let anomalyKey = null; // what the panel shows, to rebuild it only when that changes

  function sensorText(sensor) {
    return sensor === "*" ? "device" : sensor.replaceAll(",", ", ");
  }

  function kindBadge(kind) {
    const span = document.createElement("span");
    span.className = "kind kind-" + kind;
    span.textContent = kind;
    return span;
  }

  function cell(tr, text, className, title) {
    const td = document.createElement("td");
    if (className) td.className = className;
    if (text instanceof Node) td.appendChild(text);
    else td.textContent = text;
    if (title) td.title = title;
    tr.appendChild(td);
  }

  function renderAnomalyPanel(list, total) {
    const state = anomalyDetection
      ? `${int.format(total)} found${storeOn ? ", stored" : ""} · newest ${list.length} listed · click one for its device`
      : "anomaly detection off (start edge-consumer with --anomalies)";
    setText("anomaly-state", state);
    $("anomaly-wrap").hidden = !anomalyDetection;
    document.body.classList.toggle("anomalies-off", !anomalyDetection);
    const key = list.map((a) => `${a.device_id}|${a.seq}|${a.sensor}|${a.kind}|${a.name}`).join(";");
    if (key === anomalyKey) return;
    anomalyKey = key;
    const tbody = $("anomaly-rows");
    tbody.textContent = "";
    for (const a of list) {
      const tr = document.createElement("tr");
      tr.dataset.device = a.device_id;
      cell(tr, clockTime(a.ts), "mono", new Date(a.ts * 1000).toString());
      cell(tr, a.name || a.device_id, "", a.device_id);
      cell(tr, sensorText(a.sensor), "mono");
      cell(tr, kindBadge(a.kind));
      cell(tr, a.detail, "", a.detail);
      tbody.appendChild(tr);
    }
    $("anomaly-empty").hidden = list.length > 0;
  }

  // --- detail panel and charts --------------------------------------------------------------

  const charts = {};
  let historyTimer = null;
  const chartsAvailable = typeof window.Chart !== "undefined" && !window.EDGE_CHARTJS_MISSING;

  function makeChart(canvasId, datasets, extra) {
    const grid = "#232a34";
    const ticks = "#8b95a3";
    return new window.Chart($(canvasId), {
      type: "line",
      data: { datasets: datasets.map((ds) => ({ borderWidth: 1.6, pointRadius: 0, tension: 0, data: [], ...ds })) },
      options: {
        animation: false,
        parsing: false,
        normalized: true,
        responsive: true,
        maintainAspectRatio: false,
        interaction: { mode: "nearest", intersect: false, axis: "x" },
        plugins: {
          legend: { display: false }, // the caption names the lines, in their colours
          tooltip: {
            callbacks: {
              title: (items) => (items.length ? age(-items[0].parsed.x) + " ago" : ""),
              label: (item) => (item.raw && item.raw.a ? `${item.raw.a.kind}: ${item.raw.a.detail}` : `${item.dataset.label}: ${item.formattedValue}`),
            },
          },
        },
        scales: {
          x: {
            type: "linear",
            min: -60,
            max: 0,
            grid: { color: grid },
            ticks: { color: ticks, callback: clock },
          },
          y: { grid: { color: grid }, ticks: { color: ticks, maxTicksLimit: 5 }, ...(extra || {}) },
        },
      },
      plugins: [deviceLines],
    });
  }

  // Device-level findings (dropout, multivariate: sensor "*") as dashed lines across a chart;
  // a sensor's findings are points of the chart's "anomaly" dataset.
  const ANOMALY_COLOR = "#f85149";
  const deviceLines = {
    id: "edgeDeviceAnomalies",
    afterDatasetsDraw(chart) {
      const xs = chart.$deviceAnomalies;
      if (!xs || !xs.length) return;
      const { ctx, chartArea: area, scales } = chart;
      ctx.save();
      ctx.strokeStyle = ANOMALY_COLOR;
      ctx.globalAlpha = 0.75;
      ctx.lineWidth = 1;
      ctx.setLineDash([3, 3]);
      for (const x of xs) {
        const px = scales.x.getPixelForValue(x);
        if (px < area.left || px > area.right) continue;
        ctx.beginPath();
        ctx.moveTo(px, area.top);
        ctx.lineTo(px, area.bottom);
        ctx.stroke();
      }
      ctx.restore();
    },
  };

  function markerDataset() {
    return {
      label: "anomaly",
      showLine: false,
      pointRadius: 4.5,
      pointHoverRadius: 6,
      pointStyle: "triangle",
      borderColor: ANOMALY_COLOR,
      backgroundColor: ANOMALY_COLOR,
      pointBorderColor: "#0e1116",
      pointBorderWidth: 1,
    };
  }

  function ensureCharts() {
    if (charts.temp || !chartsAvailable) return;
    charts.temp = makeChart("chart-temp", [{ label: "temp", borderColor: "#f0883e" }, markerDataset()]);
    charts.humidity = makeChart("chart-humidity", [{ label: "humidity", borderColor: "#58a6ff" }, markerDataset()]);
    charts.gas = makeChart("chart-gas", [
      { label: "CO", borderColor: "#d2a8ff" },
      { label: "LPG", borderColor: "#3fb950" },
      { label: "smoke", borderColor: "#8b949e" },
      markerDataset(),
    ]);
    const lanes = { 0: "light off", 1: "light on", 2: "no motion", 3: "motion" };
    charts.bool = makeChart(
      "chart-bool",
      [
        { label: "light", borderColor: "#e3b341", stepped: true },
        { label: "motion", borderColor: "#ff7b72", stepped: true },
      ],
      {
        min: -0.4,
        max: 3.4,
        afterBuildTicks: (axis) => {
          axis.ticks = [0, 1, 2, 3].map((value) => ({ value }));
        },
        ticks: { color: "#8b95a3", callback: (v) => lanes[v] ?? "" },
      },
    );
  }

  // Seconds before now as -m:ss ("now" at 0).
  function clock(v) {
    if (v === 0) return "now";
    const s = Math.round(-v);
    return `-${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`;
  }

  function points(series, key, offset) {
    const ts = series.ts;
    const values = series[key];
    const out = new Array(ts.length);
    for (let i = 0; i < ts.length; i++) out[i] = { x: ts[i] - now, y: values[i] === null ? null : values[i] + (offset || 0) };
    return out;
  }

  // The index of the sample nearest to ts in the series (-1 if none within `slack` seconds).
  function nearest(series, ts, slack) {
    const t = series.ts;
    if (!t.length) return -1;
    let lo = 0;
    let hi = t.length - 1;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (t[mid] < ts) lo = mid + 1;
      else hi = mid;
    }
    if (lo > 0 && Math.abs(t[lo - 1] - ts) < Math.abs(t[lo] - ts)) lo -= 1;
    return Math.abs(t[lo] - ts) <= slack ? lo : -1;
  }

  const MARKER_CHART = { temp: "temp", humidity: "humidity", co: "gas", lpg: "gas", smoke: "gas" };
  const SAME_READING_S = 0.25; // a sample this close to a finding's ts is that reading
  const NEAR_READING_S = 3; // else the marker sits on the line, at the sample this close

  // Chart points for a device's findings: one per sensor named, at the anomalous value when
  // known. The charts sample at most once a second, so the reading itself may be missing:
  // then the finding's own value places the marker of the sensor it is about (the only one,
  // or in a chip's joint finding the one its detail starts with, as every detector words it).
  function markers(series, found) {
    const out = { temp: [], humidity: [], gas: [], lines: [], count: 0 };
    for (const a of found) {
      const x = a.ts - now;
      const before = out.temp.length + out.humidity.length + out.gas.length;
      if (a.sensor === "*") {
        out.lines.push(x);
        out.count += 1;
        continue;
      }
      const sensors = a.sensor.split(",");
      const top = sensors.length === 1 ? sensors[0] : (a.detail || "").split(" ")[0];
      const same = nearest(series, a.ts, SAME_READING_S);
      const near = same >= 0 ? same : nearest(series, a.ts, NEAR_READING_S);
      for (const sensor of sensors) {
        const chart = MARKER_CHART[sensor];
        if (!chart) continue;
        let y = null;
        if (same >= 0) y = series[sensor][same];
        else if (sensor === top && Number.isFinite(a.value)) y = a.value;
        else if (near >= 0) y = series[sensor][near];
        if (y !== null && y !== undefined) out[chart].push({ x, y, a });
      }
      if (out.temp.length + out.humidity.length + out.gas.length > before) out.count += 1;
    }
    for (const key of ["temp", "humidity", "gas"]) out[key].sort((p, q) => p.x - q.x);
    return out;
  }

  async function getJson(url) {
    try {
      const response = await fetch(url, { cache: "no-store" });
      return { status: response.status, body: response.ok ? await response.json() : null };
    } catch (err) {
      return { status: 0, body: null, error: String(err) };
    }
  }

  function renderDeviceAnomalies(result) {
    const list = $("device-anomalies");
    const body = result.body;
    if (!body) {
      setText("device-anomaly-count", "");
      setText("device-anomaly-note", result.error ? "Anomalies unavailable: " + result.error : `Anomalies: HTTP ${result.status}`);
      list.textContent = "";
      return;
    }
    const found = body.anomalies;
    setText("device-anomaly-count", found.length ? `(${int.format(found.length)}${body.store ? " in the last 24 h" : ""})` : "");
    let note = "";
    if (!body.anomaly_detection) note = "anomaly detection off" + (found.length ? ": these were stored earlier." : ".");
    else if (!found.length) note = "None found for this device.";
    if (body.store_error) note += ` The store could not be read (${body.store_error}).`;
    setText("device-anomaly-note", note.trim());
    $("device-anomaly-note").hidden = note === "";
    const key = found.slice(0, DEVICE_ANOMALIES_LISTED).map((a) => `${a.seq}|${a.sensor}|${a.kind}`).join(";") + "@" + body.device;
    if (list.dataset.key === key) return;
    list.dataset.key = key;
    list.textContent = "";
    for (const a of found.slice(0, DEVICE_ANOMALIES_LISTED)) {
      const li = document.createElement("li");
      const time = document.createElement("span");
      time.className = "mono muted";
      time.textContent = clockTime(a.ts);
      const sensor = document.createElement("span");
      sensor.className = "mono";
      sensor.textContent = sensorText(a.sensor);
      const detail = document.createElement("span");
      detail.className = "detail-text";
      detail.textContent = a.detail || "";
      detail.title = a.detail || "";
      li.append(time, sensor, kindBadge(a.kind), detail);
      list.appendChild(li);
    }
  }

  async function loadHistory() {
    if (!selected) return;
    const id = selected;
    const [history, anomalies] = await Promise.all([
      getJson(`/api/devices/${encodeURIComponent(id)}/history?minutes=${HISTORY_MINUTES}`),
      getJson(`/api/anomalies?device=${encodeURIComponent(id)}&limit=${DEVICE_ANOMALIES}`),
    ]);
    if (id !== selected) return;
    renderDeviceAnomalies(anomalies);
    const body = history.body;
    if (!body) {
      if (history.error) setText("history-span", "History unavailable: " + history.error);
      else setText("history-span", history.status === 404 ? "No readings recorded for this device yet." : `History: HTTP ${history.status}`);
      return;
    }
    const s = body.series;
    const found = anomalies.body ? anomalies.body.anomalies : [];
    const marks = markers(s, found);
    const marked = marks.count;
    const span = `${s.ts.length} samples over the last ${HISTORY_MINUTES} minutes (at most one per second)`;
    const noun = marked === 1 ? "anomaly" : "anomalies";
    setText("history-span", marked ? `${span}; ${marked} ${noun} marked in red.` : span + ".");
    if (!chartsAvailable) return;
    ensureCharts();
    charts.temp.data.datasets[0].data = points(s, "temp");
    charts.temp.data.datasets[1].data = marks.temp;
    charts.humidity.data.datasets[0].data = points(s, "humidity");
    charts.humidity.data.datasets[1].data = marks.humidity;
    charts.gas.data.datasets[0].data = points(s, "co");
    charts.gas.data.datasets[1].data = points(s, "lpg");
    charts.gas.data.datasets[2].data = points(s, "smoke");
    charts.gas.data.datasets[3].data = marks.gas;
    charts.bool.data.datasets[0].data = points(s, "light");
    charts.bool.data.datasets[1].data = points(s, "motion", 2);
    // The x axis spans the data (at least a minute), so a short history is not a sliver.
    const spanS = s.ts.length ? now - s.ts[0] : 0;
    const step = spanS <= 120 ? 20 : spanS <= 300 ? 60 : 120;
    const min = -Math.max(60, Math.ceil(spanS / step) * step);
    for (const chart of Object.values(charts)) {
      chart.$deviceAnomalies = marks.lines;
      chart.options.scales.x.min = min;
      chart.options.scales.x.ticks.stepSize = step;
      chart.update("none");
    }
  }

  function renderFacts(d) {
    const facts = [
      ["Status", STATE_TEXT[d.state](d)],
      ["Last seen", d.last_seen === null ? "never" : age(now - d.last_seen) + " ago"],
      ["msg/s", rate(d.rate)],
      ["Received", int.format(d.received)],
      ["Gaps", int.format(d.gaps)],
      ["Duplicates", int.format(d.duplicates)],
      ["Invalid", int.format(d.invalid)],
      ["Resets", int.format(d.resets)],
      ["Overflow", d.overflow === null ? "–" : int.format(d.overflow)],
      ["Reconnects", d.reconnects === null ? "–" : int.format(d.reconnects)],
      ["Arch", d.arch || "–"],
      ["Host", d.host || "–"],
    ];
    const dl = $("detail-facts");
    if (dl.children.length !== facts.length) {
      dl.textContent = "";
      for (const [label] of facts) {
        const div = document.createElement("div");
        const dt = document.createElement("dt");
        dt.textContent = label;
        div.append(dt, document.createElement("dd"));
        dl.appendChild(div);
      }
    }
    facts.forEach(([, value], i) => {
      const dd = dl.children[i].lastChild;
      if (dd.textContent !== value) dd.textContent = value;
    });
    setText("detail-name", d.name || d.id);
    setText("detail-meta", d.id);
  }

  function openDetail(id) {
    if (id !== selected) {
      const list = $("device-anomalies");
      list.textContent = "";
      list.dataset.key = "";
      setText("device-anomaly-count", "");
      setText("device-anomaly-note", "Loading…");
      $("device-anomaly-note").hidden = false;
    }
    selected = id;
    if (devices.has(id)) renderFacts(devices.get(id));
    $("detail").hidden = false;
    queueRender();
    clearInterval(historyTimer);
    loadHistory();
    historyTimer = setInterval(loadHistory, HISTORY_REFRESH_MS);
  }

  function closeDetail() {
    selected = null;
    clearInterval(historyTimer);
    $("detail").hidden = true;
    queueRender();
  }

  // --- start --------------------------------------------------------------------------------

  function start() {
    buildHead();
    if (!chartsAvailable) {
      const where = window.EDGE_CHARTJS_MISSING || "the configured path";
      const note = $("charts-note");
      note.textContent = `Charts are unavailable: Chart.js was not found at ${where} on the monitor host ` +
        "(apt-get install libjs-chart.js, or start edge-consumer with --chartjs PATH). " +
        "Everything else on this page works without it.";
      note.hidden = false;
      $("charts").hidden = true;
    }
    $("filter").addEventListener("input", (e) => {
      filterText = e.target.value.trim().toLowerCase();
      refreshView();
    });
    $("table-wrap").addEventListener("scroll", queueRender, { passive: true });
    window.addEventListener("resize", queueRender);
    $("rows").addEventListener("click", (e) => {
      const tr = e.target.closest("tr[data-id]");
      if (tr) openDetail(tr.dataset.id);
    });
    $("detail-close").addEventListener("click", closeDetail);
    $("anomaly-rows").addEventListener("click", (e) => {
      const tr = e.target.closest("tr[data-device]");
      if (tr) openDetail(tr.dataset.device);
    });
    document.addEventListener("keydown", (e) => {
      if (e.key === "Escape") closeDetail();
    });

    const events = new EventSource("/events");
    events.onopen = () => pill("stream", true, "live");
    events.onmessage = (e) => {
      pill("stream", true, "live");
      applySnapshot(JSON.parse(e.data));
    };
    events.onerror = () => pill("stream", false, "reconnecting…");
    setInterval(() => {
      if (lastSnapshotAt && Date.now() - lastSnapshotAt > STALE_MS) pill("stream", false, "stale");
    }, 1000);
  }

  start();
})();
