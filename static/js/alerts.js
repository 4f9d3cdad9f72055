// Acknowledge buttons on the alerts page: POST to the alerts API with the
// session and its CSRF token, then show the new state without a reload.
(function () {
  "use strict";

  const csrf = document.querySelector('meta[name="csrf-token"]').content;

  async function acknowledge(button) {
    const row = button.closest("tr");
    const error = row.querySelector("[data-ack-error]");
    button.disabled = true;
    error.textContent = "";
    try {
      const response = await fetch(button.dataset.acknowledge, {
        method: "POST", credentials: "same-origin",
        headers: { "Content-Type": "application/json", Accept: "application/json", "X-CSRFToken": csrf },
        body: JSON.stringify({ note: "" }),
      });
      const body = await response.json();
      if (!response.ok) throw new Error(body.detail || `HTTP ${response.status}`);
      const state = row.querySelector("[data-testid=alert-state]");
      state.textContent = body.state;
      state.className = `state state-${body.state}`;
      button.remove();
    } catch (failure) {
      error.textContent = `Not acknowledged: ${failure.message}`;
      button.disabled = false;
    }
  }

  document.querySelectorAll("button[data-acknowledge]").forEach((button) => {
    button.addEventListener("click", () => acknowledge(button));
  });
})();
