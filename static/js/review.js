// Keyboard shortcuts on an escalated frame's page: every element with
// data-shortcut="<key>" is clicked when that key is pressed (e, c, 1..9 are the
// review buttons, j and k the queue's next and previous links); ? opens or
// closes the list of shortcuts. Keys typed into a field, or with a modifier,
// are left alone, and a decision is posted once (the form is a plain form, so
// the page works the same without this script).
(function () {
  "use strict";

  const help = document.getElementById("shortcuts");
  let sent = false;

  function typing(target) {
    return target instanceof HTMLElement && (target.isContentEditable || /^(INPUT|TEXTAREA|SELECT)$/.test(target.tagName));
  }

  document.addEventListener("keydown", (event) => {
    if (event.defaultPrevented || event.ctrlKey || event.metaKey || event.altKey || typing(event.target)) return;
    if (event.key === "?") {
      if (help) {
        help.open = !help.open;
        if (help.open) help.querySelector("summary").focus();
      }
      event.preventDefault();
      return;
    }
    if (event.key === "Escape" && help && help.open) {
      help.open = false;
      return;
    }
    const target = document.querySelector(`[data-shortcut="${CSS.escape(event.key)}"]`);
    if (!target) return;
    event.preventDefault();
    if (target.tagName === "BUTTON") {
      if (sent) return;
      sent = true;
      target.form.querySelectorAll("button").forEach((b) => b.setAttribute("aria-disabled", "true"));
      target.form.requestSubmit(target);
    } else {
      target.click();
    }
  });
})();
