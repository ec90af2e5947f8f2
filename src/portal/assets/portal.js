// Progressive enhancement of the pages that change while the person waits (the apps answering,
// the unbinds under way): the part of the page marked data-live is fetched again from this
// origin and swapped in place, instead of the whole page reloading (which is what happens
// without JavaScript, through a <noscript> refresh). Nothing here sees the session: the
// request carries the same-site cookie, and the answer is the server-rendered fragment.
"use strict";
(function () {
  var live = document.querySelector("[data-live]");
  if (!live || !window.fetch || !("content" in document.createElement("template"))) {
    return;
  }
  // How often the part is fetched again, as the page says (the accounts arrive quickly, the
  // unbinds take seconds to days). A part marked data-hold is held by the server until it has
  // news (its URL says what the page has seen), so it is asked for at once, and again after a
  // short pause that gathers the answers arriving together into one swap.
  function every() {
    var ms = parseInt(live.getAttribute("data-every"), 10);
    return ms >= 100 ? ms : 1500;
  }
  function poll() {
    var url = live.getAttribute("data-live");
    if (!url || url.charAt(0) !== "/") {
      return;
    }
    fetch(url, { credentials: "same-origin", cache: "no-store" })
      .then(function (response) {
        if (!response.ok) {
          throw new Error("status " + response.status);
        }
        return response.text();
      })
      .then(function (html) {
        var holder = document.createElement("template");
        holder.innerHTML = html.trim();
        var fresh = holder.content.firstElementChild;
        if (!fresh) {
          throw new Error("empty answer");
        }
        if (fresh.hasAttribute("data-reload")) {
          window.location.reload();
          return;
        }
        live.innerHTML = fresh.innerHTML;
        if (fresh.hasAttribute("data-live")) {
          live.setAttribute("data-live", fresh.getAttribute("data-live"));
          if (fresh.hasAttribute("data-every")) {
            live.setAttribute("data-every", fresh.getAttribute("data-every"));
          }
          window.setTimeout(poll, every());
        } else {
          live.removeAttribute("data-live");
          live.removeAttribute("aria-busy");
        }
      })
      .catch(function () {
        window.setTimeout(poll, 5000);
      });
  }
  window.setTimeout(poll, live.hasAttribute("data-hold") ? 0 : Math.min(every(), 1000));
})();
