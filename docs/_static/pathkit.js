// Figures are drawn while the page is still laid out; fit each to its column once the page has loaded.
window.addEventListener("load", function () {
  if (!window.Plotly) { return; }
  document.querySelectorAll(".js-plotly-plot").forEach(function (gd) { window.Plotly.Plots.resize(gd); });
});
