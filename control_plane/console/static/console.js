// The console's only script of its own: the theme switch, copy buttons, and following a single sign-on link.
(function () {
  "use strict";
  var COOKIE = "livora_theme";
  var ORDER = ["system", "light", "dark"];
  var LABELS = { system: "follows the system", light: "light", dark: "dark" };

  function current() {
    var chosen = document.documentElement.getAttribute("data-theme");
    return chosen === "light" || chosen === "dark" ? chosen : "system";
  }

  function apply(theme) {
    if (theme === "system") {
      document.documentElement.removeAttribute("data-theme");
      document.cookie = COOKIE + "=; Path=/; Max-Age=0; SameSite=Lax";
    } else {
      document.documentElement.setAttribute("data-theme", theme);
      document.cookie = COOKIE + "=" + theme + "; Path=/; Max-Age=31536000; SameSite=Lax";
    }
    document.querySelectorAll("[data-theme-toggle]").forEach(function (button) {
      button.textContent = "Theme: " + theme;
      button.setAttribute("aria-label", "Colour theme: " + LABELS[theme] + ". Change it");
    });
  }

  function copy(text) {
    if (navigator.clipboard && window.isSecureContext) {
      return navigator.clipboard.writeText(text);
    }
    // Plain http on a non-local host has no clipboard API: the older command still works there.
    return new Promise(function (resolve, reject) {
      var area = document.createElement("textarea");
      area.value = text;
      area.setAttribute("readonly", "");
      area.className = "visually-hidden";
      document.body.appendChild(area);
      area.select();
      var done = document.execCommand("copy");
      document.body.removeChild(area);
      (done ? resolve : reject)();
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-theme-toggle]").forEach(function (button) {
      button.hidden = false;
      button.addEventListener("click", function () {
        apply(ORDER[(ORDER.indexOf(current()) + 1) % ORDER.length]);
      });
    });
    apply(current());
    // Copy buttons (secrets shown once, install snippets): shown only where the script runs.
    document.querySelectorAll("button[data-copy]").forEach(function (button) {
      button.hidden = false;
      button.addEventListener("click", function () {
        var id = button.getAttribute("data-copy");
        var source = document.getElementById(id);
        var status = document.querySelector('[data-copy-status="' + id + '"]');
        var say = function (text) {
          if (status) {
            status.textContent = text;
          }
        };
        copy(source ? source.textContent : "").then(
          function () {
            say("Copied to the clipboard.");
          },
          function () {
            say("Could not copy: select the text and copy it yourself.");
          }
        );
      });
    });
    // A page that shows a secret once answers a POST: its address becomes the GET page, so a reload
    // shows the list again instead of sending the form twice (and minting a second secret).
    var settled = document.querySelector("[data-replace-url]");
    if (settled && window.history.replaceState) {
      window.history.replaceState(null, "", settled.getAttribute("data-replace-url"));
    }
    var follow = document.querySelector("a[data-follow]");
    if (follow) {
      window.location.assign(follow.href);
    }
  });
})();
