// scaler console: refresh the part of the page marked data-live without reloading it.
// Every data-refresh seconds, fetch data-live (same origin, the console cookie goes along) and swap
// the HTML in, keeping open <details> open. 401: the credential is gone, reload into the login form.
"use strict";
(function () {
  const live = document.getElementById("live");
  const status = document.getElementById("refresh-status");
  if (!live || !live.dataset.live) return;
  const every = Math.max(1, Number(live.dataset.refresh || "5")) * 1000;
  let failing = 0;

  function say(text, bad) {
    if (!status) return;
    status.textContent = text;
    status.classList.toggle("stale", Boolean(bad));
  }

  async function refresh() {
    if (document.hidden) return;
    try {
      const r = await fetch(live.dataset.live, {credentials: "same-origin", cache: "no-store",
                                                 headers: {"Accept": "text/html"}});
      if (r.status === 401) { window.location.reload(); return; }
      if (!r.ok) throw new Error("HTTP " + r.status + ": " + (await r.text()).slice(0, 200));
      const html = await r.text();
      const open = new Set(Array.from(live.querySelectorAll("details[open]"), d => d.dataset.key));
      live.innerHTML = html;
      for (const d of live.querySelectorAll("details")) if (open.has(d.dataset.key)) d.open = true;
      failing = 0;
      say("updated " + new Date().toISOString().slice(11, 19) + "Z", false);
    } catch (e) {
      failing += 1;
      say("not updated (" + (e && e.message ? e.message : e) + "); retrying", true);
    }
  }

  say("live, every " + every / 1000 + " s", false);
  setInterval(refresh, every);
  document.addEventListener("visibilitychange", () => { if (!document.hidden) refresh(); });
})();
