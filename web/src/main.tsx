import { StrictMode } from "react";
import { createRoot } from "react-dom/client";
import App from "./App";
import "./styles.css";
import { prefetch } from "./lib/api";

const deep = /^\/executions\/([^/]+)\/?$/.exec(window.location.pathname);
if (deep) prefetch(`/api/executions/${deep[1]}?shape=columns`);

createRoot(document.getElementById("root")!).render(
  <StrictMode>
    <App />
  </StrictMode>,
);
