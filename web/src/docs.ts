// Swagger UI from npm, bundled: the edge's and the REST gateway's OpenAPI documents, with "try
// it" sending the API key the playground stored.
import SwaggerUIBundle from "swagger-ui-dist/swagger-ui-bundle.js";
import "swagger-ui-dist/swagger-ui.css";
import { apiKey } from "./lib/api";

function show(url: string): void {
  SwaggerUIBundle({
    url,
    dom_id: "#swagger",
    deepLinking: true,
    requestInterceptor: (request: { headers: Record<string, string> }) => {
      const key = apiKey();
      if (key) {
        request.headers.Authorization = `Bearer ${key}`;
        request.headers["x-api-key"] = key;
      }
      return request;
    },
  });
}

for (const button of document.querySelectorAll<HTMLButtonElement>("button[data-spec]")) {
  button.addEventListener("click", () => show(button.dataset.spec!));
}
show("/openapi.json");
