// The demo page's embed snippet names this server's own address.
const pre = document.getElementById("embed");
if (pre) pre.textContent = `<script src="${location.origin}/widget.js" async></script>`;
