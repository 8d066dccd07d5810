// The console's only script of its own: the theme switch, and following a single sign-on link.
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

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-theme-toggle]").forEach(function (button) {
      button.hidden = false;
      button.addEventListener("click", function () {
        apply(ORDER[(ORDER.indexOf(current()) + 1) % ORDER.length]);
      });
    });
    apply(current());
    var follow = document.querySelector("a[data-follow]");
    if (follow) {
      window.location.assign(follow.href);
    }
  });
})();
