import { resolve } from "node:path";
import { svelte } from "@sveltejs/vite-plugin-svelte";
import { defineConfig } from "vite";

// The edge `vite dev` sends API calls to while the page is being worked on.
const edge = process.env.GENMESH_EDGE ?? "http://127.0.0.1:8000";

// Two pages: the playground at / and the API docs at /docs/, both served by the edge.
export default defineConfig({
  plugins: [svelte()],
  server: {
    proxy: {
      "/api": { target: edge, ws: true },
      "/v1": edge,
      "/openapi.json": edge,
    },
  },
  build: {
    chunkSizeWarningLimit: 2000,
    rollupOptions: {
      input: {
        main: resolve(import.meta.dirname, "index.html"),
        docs: resolve(import.meta.dirname, "docs/index.html"),
      },
    },
  },
});
