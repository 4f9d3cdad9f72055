// Live parts of the dashboard's pages: each [data-live] element polls its fragment view with htmx
// (hx-get, hx-trigger="every 5s"). Two things htmx does not do on its own:
// * an answer identical to the last one is not swapped in, so a quiet fleet does not redraw the
//   table every five seconds (a selection, the focus and the scroll position stay put);
// * a poll that fails says so beside the element, so nobody trusts figures that stopped moving.
(function () {
  "use strict";

  const last = new WeakMap();
  const clock = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit", second: "2-digit" });

  function note(elt) {
    let found = elt.previousElementSibling;
    if (!found || !found.hasAttribute("data-live-note")) {
      found = document.createElement("p");
      found.setAttribute("data-live-note", "");
      found.className = "live-note";
      elt.before(found);
    }
    return found;
  }

  function live(event) {
    const elt = event.detail && event.detail.elt;
    return elt && elt.matches && elt.matches("[data-live]") ? elt : null;
  }

  document.addEventListener("htmx:beforeSwap", (event) => {
    const elt = live(event);
    if (!elt || event.detail.xhr.status !== 200) return;
    const body = event.detail.serverResponse;
    if (last.get(elt) === body) event.detail.shouldSwap = false;
    last.set(elt, body);
    elt.dataset.liveAt = new Date().toISOString();
    const shown = elt.previousElementSibling;
    if (shown && shown.hasAttribute("data-live-note")) shown.remove();
  });

  function failed(event) {
    const elt = live(event);
    if (!elt) return;
    const status = event.detail.xhr && event.detail.xhr.status ? `the server answered ${event.detail.xhr.status}` : "the server did not answer";
    const since = elt.dataset.liveAt ? clock.format(new Date(elt.dataset.liveAt)) : "the page was loaded";
    note(elt).textContent = `Not refreshed since ${since}: ${status}. Retrying every few seconds.`;
  }

  document.addEventListener("htmx:responseError", failed);
  document.addEventListener("htmx:sendError", failed);
})();
