// The API page: Swagger UI on this app's own /openapi.json, started from a file (no inline script,
// so the page keeps the service's Content-Security-Policy).
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  window.ui = SwaggerUIBundle({ url: "/openapi.json", dom_id: "#swagger-ui" });
});
