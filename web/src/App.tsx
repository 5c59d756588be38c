import { useEffect, useState } from "react";
import { BrowserRouter, Link, Route, Routes } from "react-router";
import { LiveProvider, useLiveStatus } from "./lib/live";
import { getToken, onAuthRequired, setToken } from "./lib/api";
import Workflows from "./pages/Workflows";
import Executions from "./pages/Executions";
import Execution from "./pages/Execution";
import Diff from "./pages/Diff";

function LiveDot() {
  const live = useLiveStatus();
  return (
    <span className={`live-dot ${live ? "on" : "off"}`} title={live ? "live updates on" : "live updates reconnecting"}>
      {live ? "● live" : "○ offline"}
    </span>
  );
}

function TokenPrompt() {
  const [value, setValue] = useState(getToken() ?? "");
  return (
    <main className="page">
      <h1>Token required</h1>
      <p>This TraceLab API requires a bearer token (<code>tracelab serve --token</code>).</p>
      <form onSubmit={(e) => { e.preventDefault(); setToken(value.trim()); window.location.reload(); }}>
        <input type="password" value={value} onChange={(e) => setValue(e.target.value)} aria-label="API token" autoFocus />
        <button type="submit">Use token</button>
      </form>
    </main>
  );
}

function NotFound() {
  return <main className="page"><h1>Not found</h1><p><Link to="/">Back to workflows</Link></p></main>;
}

export default function App() {
  const [needToken, setNeedToken] = useState(false);
  useEffect(() => onAuthRequired(() => setNeedToken(true)), []);
  if (needToken) return <TokenPrompt />;
  return (
    <BrowserRouter>
      <LiveProvider>
        <header className="top">
          <Link to="/" className="brand">TraceLab</Link>
          <LiveDot />
          <a className="muted small" href="/api/workflows" target="_blank" rel="noreferrer">API</a>
        </header>
        <Routes>
          <Route path="/" element={<Workflows />} />
          <Route path="/workflows/:wf" element={<Executions />} />
          <Route path="/executions/:runId" element={<Execution />} />
          <Route path="/diff/:a/:b" element={<Diff />} />
          <Route path="*" element={<NotFound />} />
        </Routes>
      </LiveProvider>
    </BrowserRouter>
  );
}
