// pageloan default site: show the response headers this page was served with.
// A HEAD request for the page itself returns the same headers as the GET did.
"use strict";

(function () {
  document.documentElement.dataset.js = "ran";
  const note = document.getElementById("served-note");
  const list = document.getElementById("served-headers");
  if (!note || !list) {
    return;
  }
  const shown = ["content-type", "content-length", "etag", "last-modified", "cache-control", "accept-ranges"];
  fetch(window.location.pathname, { method: "HEAD", cache: "no-store" })
    .then(function (response) {
      list.replaceChildren();
      for (const name of shown) {
        const value = response.headers.get(name);
        if (value === null) {
          continue;
        }
        const term = document.createElement("dt");
        term.textContent = name;
        const detail = document.createElement("dd");
        detail.textContent = value;
        list.append(term, detail);
      }
      note.textContent = "HEAD " + window.location.pathname + " → " + response.status + " " + response.statusText;
      list.hidden = false;
    })
    .catch(function (error) {
      note.textContent = "Could not ask the server: " + error;
    });
})();
