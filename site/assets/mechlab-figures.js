// Draws every plotly figure of a course page (or slide deck) with the site's own copy of plotly.js.
// A figure is a <div class="mechlab-plotly" data-figure="BASE64(JSON)">, written by mechlab.course.site_render.
(function () {
  function decode(b64) {
    var bytes = Uint8Array.from(atob(b64), function (c) { return c.charCodeAt(0); });
    return JSON.parse(new TextDecoder().decode(bytes));
  }
  function drawAll() {
    var divs = document.querySelectorAll("div.mechlab-plotly:not([data-drawn])");
    if (!divs.length) return;
    if (!window.Plotly) {
      throw new Error("mechlab: this page has plotly figures but plotly.js did not load");
    }
    divs.forEach(function (div) {
      var spec = decode(div.getAttribute("data-figure"));
      div.setAttribute("data-drawn", "pending");
      window.Plotly.newPlot(div, spec.data || [], spec.layout || {},
                            Object.assign({responsive: true, displaylogo: false}, spec.config || {}))
        .then(function () { div.setAttribute("data-drawn", "yes"); });
    });
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", drawAll);
  else drawAll();
  // printing: open every collapsed block so the instructor notes print whole
  window.addEventListener("beforeprint", function () {
    document.querySelectorAll("details").forEach(function (d) { d.setAttribute("open", ""); });
  });
})();
