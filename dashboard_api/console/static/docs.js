// The OpenAPI browser: the document needs a credential like every route, so the console's
// session token (same origin) is sent with each request; without one, sign in first.
(function () {
  const token = sessionStorage.getItem("gas-safety.token");
  if (!token) {
    location.replace("/#docs");
    return;
  }
  window.ui = SwaggerUIBundle({
    url: "/openapi.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    requestInterceptor: (req) => {
      if (!req.headers.Authorization && !req.headers["X-API-Key"]) {
        req.headers.Authorization = "Bearer " + sessionStorage.getItem("gas-safety.token");
      }
      return req;
    },
  });
})();
