// Acknowledge forms on the alerts page: POST the note to the alerts API with the
// session and its CSRF token, then show the new state, who and the note without a reload.
(function () {
  "use strict";

  const csrf = document.querySelector('meta[name="csrf-token"]').content;

  function acknowledgedBy(body) {
    const info = document.createElement("div");
    const who = document.createElement("div");
    who.className = "muted small";
    who.dataset.testid = "acknowledged-by";
    const at = document.createElement("time");
    at.dateTime = body.acknowledged_at;
    at.textContent = new Date(body.acknowledged_at).toISOString().slice(0, 16).replace("T", " ");
    who.append(`by ${body.acknowledged_by}, `, at);
    info.append(who);
    if (body.acknowledged_note) {
      const note = document.createElement("p");
      note.className = "ack-note";
      note.dataset.testid = "ack-note";
      note.textContent = body.acknowledged_note;
      info.append(note);
    }
    return info;
  }

  async function acknowledge(form) {
    const row = form.closest("tr");
    const error = row.querySelector("[data-ack-error]");
    const button = form.querySelector("button");
    button.disabled = true;
    error.textContent = "";
    try {
      const response = await fetch(form.dataset.acknowledge, {
        method: "POST", credentials: "same-origin",
        headers: { "Content-Type": "application/json", Accept: "application/json", "X-CSRFToken": csrf },
        body: JSON.stringify({ note: form.elements.note.value.trim() }),
      });
      const body = await response.json();
      if (!response.ok) throw new Error(body.detail || `HTTP ${response.status}`);
      const state = row.querySelector("[data-testid=alert-state]");
      state.textContent = body.state;
      state.className = `state state-${body.state}`;
      row.querySelector("[data-ack-info]").replaceChildren(acknowledgedBy(body));
      form.remove();
    } catch (failure) {
      error.textContent = `Not acknowledged: ${failure.message}`;
      button.disabled = false;
    }
  }

  document.querySelectorAll("form[data-acknowledge]").forEach((form) => {
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      acknowledge(form);
    });
  });
})();
