// Live pending approvals: on each server-sent "pending" event, fetch the server-rendered
// (escaped) fragment and swap it in. No other script runs in the console.
"use strict";
(function () {
  var box = document.getElementById("pending");
  if (!box || !window.EventSource) { return; }
  var url = box.getAttribute("data-live");
  var source = new EventSource("/events");
  function signIn() { source.close(); window.location.assign("/login?m=expired"); }
  source.addEventListener("signin", signIn);
  source.addEventListener("pending", function () {
    fetch(url, { credentials: "same-origin", headers: { Accept: "text/html" } }).then(function (r) {
      if (r.status === 401) { signIn(); return null; }
      return r.ok ? r.text() : null;
    }).then(function (html) {
      if (html !== null && html !== undefined) { box.innerHTML = html; }
    });
  });
}());
