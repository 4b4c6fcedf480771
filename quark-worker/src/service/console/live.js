// Quark console: refreshes the parts of a page marked `data-live` in place every few seconds,
// and asks for confirmation before a form marked `data-confirm` is sent. Plain JavaScript, no
// build step.
(function () {
  "use strict";
  var EVERY_MS = 3000;

  document.addEventListener("submit", function (event) {
    var question = event.target.getAttribute("data-confirm");
    if (question && !window.confirm(question)) {
      event.preventDefault();
    }
  });

  function refresh() {
    if (document.hidden) {
      return;
    }
    fetch(window.location.href, { credentials: "same-origin", headers: { "X-Quark-Live": "1" } })
      .then(function (response) {
        if (!response.ok || response.redirected) {
          return null;
        }
        return response.text();
      })
      .then(function (text) {
        if (!text) {
          return;
        }
        var fresh = new DOMParser().parseFromString(text, "text/html");
        document.querySelectorAll("[data-live]").forEach(function (part) {
          var name = part.getAttribute("data-live");
          var next = fresh.querySelector('[data-live="' + name + '"]');
          // A part holding a checked box keeps it: the user is choosing in it.
          if (next && !part.querySelector("input:checked") && part.innerHTML !== next.innerHTML) {
            part.innerHTML = next.innerHTML;
            part.setAttribute("data-refreshed", String(Date.now()));
          }
        });
      })
      .catch(function () {});
  }

  setInterval(refresh, EVERY_MS);
})();
