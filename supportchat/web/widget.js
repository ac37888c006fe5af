/* supportchat customer widget: embed with one tag (see README):
 *   <script src="https://chat.example/widget.js" async
 *           data-title="Support" data-lang="zh-CN"
 *           data-token="(optional integrator-signed JWT)"></script>
 * Without data-token the widget asks the server for an anonymous visitor
 * token (POST /api/v1/visitors) and keeps it in localStorage.
 * API: window.SupportChat.open(), .close(), .setToken(jwt), .client */
(function () {
  "use strict";
  var script = document.currentScript;
  if (!script || window.SupportChat) return;
  var src = new URL(script.src, location.href);
  var base = src.href.replace(/[^/]*$/, "");
  var d = script.dataset;
  var opts = {
    server: d.server || src.origin,
    token: d.token || null,
    title: d.title || null, // null: "Support" in the visitor's language
    greeting: d.greeting || null,
    lang: d.lang || null, // the page's choice; else the browser's languages
    open: d.open === "true",
    position: d.position || "right",
  };
  var queued = [];
  window.SupportChat = {
    open: function () { queued.push(["open"]); },
    close: function () { queued.push(["close"]); },
    setToken: function (t) { queued.push(["setToken", t]); },
  };
  var modules = /\/static\/$/.test(base) ? base : base + "static/";
  import(modules + "widget-app.js").then(function (mod) {
    var api = mod.mount(opts);
    window.SupportChat = api;
    queued.forEach(function (q) { api[q[0]].apply(api, q.slice(1)); });
  }, function (err) {
    console.error("supportchat widget failed to load", err);
  });
})();
