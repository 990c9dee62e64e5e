// A sign-in link `/login#token=spk_...` signs in at once: the fragment never reaches a server
// or its logs, and it is cleared from the address bar before the form is sent.
"use strict";
(function () {
  const match = /^#token=(spk_[A-Za-z0-9_-]+)$/.exec(window.location.hash);
  if (!match) return;
  history.replaceState(null, "", "/login");
  document.getElementById("token").value = match[1];
  document.getElementById("login").submit();
})();
