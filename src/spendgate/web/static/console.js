// spendgate console: draws the Plotly figures the server built (each element with a
// data-figure attribute holds one figure as JSON) and wires the copy buttons. Loaded with
// `defer` after plotly.min.js, so the page is parsed and Plotly is defined when this runs.
(function () {
  "use strict";

  var PLOT_CONFIG = {
    responsive: true,
    displaylogo: false,
    modeBarButtonsToRemove: ["select2d", "lasso2d", "autoScale2d"]
  };

  function drawCharts() {
    if (typeof window.Plotly === "undefined") {
      return; // no chart on this page (or Plotly failed to load: the tables still show it all)
    }
    var charts = document.querySelectorAll("[data-figure]");
    Array.prototype.forEach.call(charts, function (element) {
      var figure = JSON.parse(element.getAttribute("data-figure"));
      window.Plotly.newPlot(element, figure.data, figure.layout, PLOT_CONFIG).then(function () {
        element.classList.add("drawn");
      });
    });
  }

  function copyWithSelection(element) {
    var range = document.createRange();
    range.selectNodeContents(element);
    var selection = window.getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
    var copied = false;
    try {
      copied = document.execCommand("copy");
    } catch (ignored) {
      copied = false; // the text stays selected: Ctrl+C works
    }
    return copied;
  }

  function showCopied(button, ok) {
    var label = button.getAttribute("data-label") || button.textContent;
    button.setAttribute("data-label", label);
    button.textContent = ok ? "Copied" : "Press Ctrl+C";
    button.classList.toggle("copied", ok);
    window.setTimeout(function () {
      button.textContent = label;
      button.classList.remove("copied");
    }, 2000);
  }

  function copyFrom(button) {
    var target = document.getElementById(button.getAttribute("data-copy"));
    if (!target) {
      return;
    }
    var text = target.textContent;
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text).then(
        function () { showCopied(button, true); },
        function () { showCopied(button, copyWithSelection(target)); }
      );
    } else {
      showCopied(button, copyWithSelection(target));
    }
  }

  document.addEventListener("click", function (event) {
    var button = event.target.closest("button[data-copy]");
    if (button) {
      event.preventDefault();
      copyFrom(button);
    }
  });

  drawCharts();
})();
