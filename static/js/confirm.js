// Forms with data-confirm ask before they are sent: the sentence names what the
// action will do (a site rollback names the version and the devices it touches).
(function () {
  "use strict";

  document.addEventListener("submit", function (event) {
    const form = event.target.closest("form[data-confirm]");
    if (form && !window.confirm(form.dataset.confirm)) event.preventDefault();
  });
})();
