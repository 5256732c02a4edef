// fdo-bootc owner console: local times and copy-on-click. Pages work without it.
"use strict";
document.addEventListener("DOMContentLoaded", function () {
  document.querySelectorAll("time[datetime]").forEach(function (el) {
    var at = new Date(el.getAttribute("datetime"));
    if (!isNaN(at.getTime())) {
      el.textContent = at.toLocaleString(undefined, {
        year: "numeric", month: "short", day: "2-digit",
        hour: "2-digit", minute: "2-digit", second: "2-digit"
      });
      el.title = el.getAttribute("datetime");
    }
  });
  document.querySelectorAll("[data-copy]").forEach(function (el) {
    el.classList.add("copyable");
    el.addEventListener("click", function () {
      if (navigator.clipboard) {
        navigator.clipboard.writeText(el.getAttribute("data-copy")).then(function () {
          el.classList.add("copied");
          setTimeout(function () { el.classList.remove("copied"); }, 1200);
        });
      }
    });
  });
  document.querySelectorAll("form[data-confirm]").forEach(function (form) {
    form.addEventListener("submit", function (event) {
      if (!window.confirm(form.getAttribute("data-confirm"))) { event.preventDefault(); }
    });
  });
});
