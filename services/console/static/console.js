// The console's own script (no inline scripts: the pages' Content-Security-Policy forbids them).
// Forms with data-confirm ask first; the progress bar takes its width; charts are drawn from the
// JSON the server put in #chart-data (Chart.js, vendored).
"use strict";

function confirmForms(root) {
  root.querySelectorAll("form[data-confirm]").forEach((form) => {
    if (form.dataset.confirmBound) return;
    form.dataset.confirmBound = "1";
    form.addEventListener("submit", (event) => {
      if (!window.confirm(form.dataset.confirm)) event.preventDefault();
    });
  });
  root.querySelectorAll("form[data-go=barber]").forEach((form) => {
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      const id = form.querySelector("input[name=id]").value;
      if (/^[0-9]+$/.test(id)) window.location.assign("/console/barbers/" + id);
    });
  });
}

function progressBars(root) {
  root.querySelectorAll(".progress .bar[data-width]").forEach((bar) => {
    bar.style.width = Math.max(0, Math.min(100, Number(bar.dataset.width))) + "%";
  });
}

const PALETTE = ["#2f6fed", "#f2a541", "#2bb673", "#d9534f", "#8e6bd8", "#5bc0de"];

function drawCharts(root) {
  const source = root.querySelector("#chart-data");
  if (!source || typeof Chart === "undefined") return;
  const data = JSON.parse(source.textContent);
  const make = (id, config) => {
    const canvas = root.querySelector("#" + id);
    if (!canvas) return;
    const existing = Chart.getChart(canvas);
    if (existing) existing.destroy();
    new Chart(canvas, config);
  };
  make("chart-daily", {
    type: "bar",
    data: { labels: data.daily.labels, datasets: [{ label: "gross volume", data: data.daily.volume, backgroundColor: PALETTE[0] }] },
    options: { animation: false, responsive: true, plugins: { legend: { display: false } } },
  });
  for (const [id, key] of [["chart-type", "by_type"], ["chart-processor", "by_processor"]]) {
    make(id, {
      type: "doughnut",
      data: { labels: data[key].labels, datasets: [{ data: data[key].volume, backgroundColor: PALETTE }] },
      options: { animation: false, responsive: true },
    });
  }
}

function enhance(root) {
  confirmForms(root);
  progressBars(root);
  drawCharts(root);
}

document.addEventListener("DOMContentLoaded", () => enhance(document));
document.addEventListener("htmx:afterSettle", (event) => enhance(event.target));
