import { defineConfig } from "vite";
import react from "@vitejs/plugin-react";
import { fileURLToPath } from "node:url";

// The build goes into the Python package, which serves it (`tracelab serve`, port 3000).
// `npm run dev` proxies /api to a `tracelab serve` on :8000.
export default defineConfig({
  plugins: [react()],
  build: {
    outDir: fileURLToPath(new URL("../tracelab/server/static", import.meta.url)),
    emptyOutDir: true,
    sourcemap: false,
    chunkSizeWarningLimit: 1024,
  },
  server: {
    proxy: { "/api": { target: "http://127.0.0.1:8000", changeOrigin: false } },
  },
});
