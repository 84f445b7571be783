// The scorecard's transcript viewer: renders the embedded conversations (#tv-data) and filters them.
// Text from the run is only ever set through textContent, never parsed as HTML.
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("tv-data").textContent);
  var list = document.getElementById("tv-list");
  var metricSel = document.getElementById("tv-metric");
  var opSel = document.getElementById("tv-op");
  var valueIn = document.getElementById("tv-value");
  var sortSel = document.getElementById("tv-sort");
  var flaggedBox = document.getElementById("tv-flagged");
  var countEl = document.getElementById("tv-count");
  var CHIPS = ["echo_rate", "repetition_rate", "role_confusion", "flagged_turns"];

  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function fmt(v) {
    return typeof v === "number" ? (Math.abs(v) >= 100 || Number.isInteger(v) ? String(Math.round(v)) : v.toFixed(3)) : "–";
  }

  function renderCritic(c) {
    var box = el("div", "critic");
    var line = "critic: " + c.verdict + (c.attempts ? " after " + c.attempts + " attempt" + (c.attempts > 1 ? "s" : "") : "");
    if (c.llm) line += " (model judged)";
    if (c.chosen_attempt !== null && c.chosen_attempt !== undefined) line += ", kept attempt " + c.chosen_attempt;
    if (c.issues.length) line += "; issues: " + c.issues.join("; ");
    box.appendChild(el("div", null, line));
    c.history.forEach(function (h) {
      var d = el("div", "draft");
      d.appendChild(el("div", null, "rejected draft " + h.attempt + (h.source ? " (" + h.source + ")" : "") + (h.issues.length ? ": " + h.issues.join("; ") : "")));
      d.appendChild(el("div", null, h.text));
      box.appendChild(d);
    });
    return box;
  }

  function renderTurn(t) {
    var node = el("div", "turn" + (t.flags.length ? " flagged" : ""));
    node.dataset.flagged = t.flags.length ? "1" : "0";
    var who = el("span", "who", t.speaker + " ");
    who.appendChild(el("span", "role", "(" + t.role + ", turn " + t.turn + ")"));
    node.appendChild(who);
    node.appendChild(document.createTextNode(": "));
    t.flags.forEach(function (f) {
      var badge = el("span", "flag", f.code);
      badge.title = f.detail;
      node.appendChild(badge);
    });
    node.appendChild(document.createTextNode(t.text));
    if (t.flags.length) node.appendChild(el("div", "critic", t.flags.map(function (f) { return f.code + ": " + f.detail; }).join("; ")));
    if (t.critic) node.appendChild(renderCritic(t.critic));
    return node;
  }

  function renderConversation(c, index) {
    var box = el("details", "conv");
    box.dataset.cid = c.id;
    box.dataset.index = String(index);
    var summary = el("summary", null, c.id + " · " + c.scenario + " · " + c.status + (c.stop_reason ? " (" + c.stop_reason + ")" : "") + " · ");
    summary.appendChild(el("span", "chips", CHIPS.filter(function (m) { return m in c.metrics; }).map(function (m) { return m + " " + fmt(c.metrics[m]); }).join(" · ")));
    box.appendChild(summary);
    box.appendChild(el("div", "chips", c.participants.map(function (p) { return p.name + " (" + p.role + ")"; }).join(", ")));
    if (c.error) box.appendChild(el("div", "critic", "error: " + c.error));
    c.turns.forEach(function (t) { box.appendChild(renderTurn(t)); });
    return box;
  }

  var nodes = data.conversations.map(renderConversation);
  nodes.forEach(function (n) { list.appendChild(n); });
  data.metrics.forEach(function (m) {
    var opt = el("option", null, m);
    opt.value = m;
    metricSel.appendChild(opt);
  });

  function readHash() {
    var params = new URLSearchParams(window.location.hash.replace(/^#/, ""));
    if (params.has("metric") && data.metrics.indexOf(params.get("metric")) >= 0) metricSel.value = params.get("metric");
    if (params.get("op") === "lt" || params.get("op") === "gt") opSel.value = params.get("op");
    if (params.has("value") && !isNaN(parseFloat(params.get("value")))) valueIn.value = params.get("value");
    if (params.get("sort") === "asc" || params.get("sort") === "desc") sortSel.value = params.get("sort");
    flaggedBox.checked = params.get("flagged") === "1";
  }

  function writeHash() {
    var params = new URLSearchParams();
    if (metricSel.value) { params.set("metric", metricSel.value); params.set("op", opSel.value); params.set("value", valueIn.value); }
    if (sortSel.value) params.set("sort", sortSel.value);
    if (flaggedBox.checked) params.set("flagged", "1");
    try { history.replaceState(null, "", "#" + params.toString()); } catch (e) { /* file:// may refuse; the view still applies */ }
  }

  function apply() {
    var metric = metricSel.value;
    var threshold = parseFloat(valueIn.value);
    var visible = 0;
    nodes.forEach(function (node, i) {
      var v = data.conversations[i].metrics[metric];
      var show = !metric || (typeof v === "number" && !isNaN(threshold) && (opSel.value === "gt" ? v > threshold : v < threshold));
      node.hidden = !show;
      if (show) visible += 1;
      node.querySelectorAll(".turn").forEach(function (t) { t.hidden = flaggedBox.checked && t.dataset.flagged !== "1"; });
      if (flaggedBox.checked && show) node.open = true;
    });
    var order = nodes.slice();
    if (sortSel.value && metric) {
      var sign = sortSel.value === "asc" ? 1 : -1;
      order.sort(function (a, b) {
        var va = data.conversations[+a.dataset.index].metrics[metric], vb = data.conversations[+b.dataset.index].metrics[metric];
        va = typeof va === "number" ? va : -sign * Infinity;
        vb = typeof vb === "number" ? vb : -sign * Infinity;
        return sign * (va - vb) || (+a.dataset.index - +b.dataset.index);
      });
    }
    order.forEach(function (n) { list.appendChild(n); });
    list.dataset.visible = String(visible);
    countEl.textContent = "showing " + visible + " of " + nodes.length + " conversations";
  }

  readHash();
  apply();
  [metricSel, opSel, valueIn, sortSel, flaggedBox].forEach(function (c) {
    c.addEventListener("change", function () { apply(); writeHash(); });
  });
  window.addEventListener("hashchange", function () { readHash(); apply(); });
})();
