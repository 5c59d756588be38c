// Payloads are shown as text, always: React text nodes, never HTML.
import { useState } from "react";

export async function copyText(text: string): Promise<boolean> {
  try {
    if (navigator.clipboard && window.isSecureContext) {
      await navigator.clipboard.writeText(text);
      return true;
    }
  } catch {
    /* fall back below */
  }
  try {
    const area = document.createElement("textarea");
    area.value = text;
    area.setAttribute("readonly", "");
    area.style.position = "fixed";
    area.style.opacity = "0";
    document.body.appendChild(area);
    area.select();
    const ok = document.execCommand("copy");
    document.body.removeChild(area);
    return ok;
  } catch {
    return false;
  }
}

export function CopyButton({ text, label = "Copy" }: { text: string; label?: string }) {
  const [state, setState] = useState<"" | "copied" | "failed">("");
  return (
    <button
      type="button"
      className="copy"
      onClick={async () => {
        const ok = await copyText(text);
        setState(ok ? "copied" : "failed");
        window.setTimeout(() => setState(""), 1500);
      }}
    >
      {state === "copied" ? "Copied" : state === "failed" ? "Copy failed" : label}
    </button>
  );
}

interface Marker {
  $tracelab: string;
  size?: number;
  encoding?: string;
  data?: string;
  base64?: string;
  reason?: string;
}

function isMarker(v: unknown): v is Marker {
  return typeof v === "object" && v !== null && !Array.isArray(v) &&
    typeof (v as Record<string, unknown>).$tracelab === "string";
}

export function pretty(value: unknown): string {
  if (typeof value === "string") {
    const t = value.trim();
    if ((t.startsWith("{") && t.endsWith("}")) || (t.startsWith("[") && t.endsWith("]"))) {
      try {
        return JSON.stringify(JSON.parse(t), null, 2);
      } catch {
        return value;
      }
    }
    return value;
  }
  try {
    return JSON.stringify(value, null, 2) ?? String(value);
  } catch {
    return String(value);
  }
}

export function Body({ value, title }: { value: unknown; title: string }) {
  if (value === null || value === undefined) {
    return (
      <div className="body">
        <div className="body-head"><b>{title}</b> <span className="muted">empty</span></div>
      </div>
    );
  }
  let note = "";
  let text: string;
  if (isMarker(value)) {
    const size = value.size !== undefined ? `${value.size.toLocaleString("en-US")} bytes` : "";
    if (value.$tracelab === "truncated") {
      note = `truncated: original size ${size}, first part shown (${value.encoding ?? "text"})`;
      text = value.data ?? "";
    } else if (value.$tracelab === "binary") {
      note = `binary, ${size}, shown as base64`;
      text = value.base64 ?? "";
    } else if (value.$tracelab === "not_captured") {
      note = `not captured: ${value.reason ?? "no reason given"}`;
      text = "";
    } else {
      note = `marker ${value.$tracelab}`;
      text = pretty(value);
    }
  } else {
    text = pretty(value);
  }
  return (
    <div className="body">
      <div className="body-head">
        <b>{title}</b>
        {note && <span className="badge">{note}</span>}
        {text && <CopyButton text={text} />}
      </div>
      {text && <pre className="code">{text}</pre>}
    </div>
  );
}

export function Headers({ headers }: { headers: unknown }) {
  if (!headers || typeof headers !== "object") return null;
  const entries = Object.entries(headers as Record<string, unknown>);
  if (!entries.length) return <div className="muted small">no headers</div>;
  return (
    <table className="kv">
      <tbody>
        {entries.map(([k, v]) => (
          <tr key={k}>
            <th>{k}</th>
            <td className="mono">{typeof v === "string" ? v : pretty(v)}</td>
          </tr>
        ))}
      </tbody>
    </table>
  );
}

/** Every other field of a request/response object (method, url, args, to, subject, …). */
export function Fields({ obj, skip }: { obj: Record<string, unknown>; skip: string[] }) {
  const entries = Object.entries(obj).filter(([k]) => !skip.includes(k));
  if (!entries.length) return null;
  return (
    <table className="kv">
      <tbody>
        {entries.map(([k, v]) => (
          <tr key={k}>
            <th>{k}</th>
            <td>
              {typeof v === "string" || typeof v === "number" || typeof v === "boolean" || v === null ? (
                <span className="mono">{String(v)}</span>
              ) : (
                <pre className="code small">{pretty(v)}</pre>
              )}
            </td>
          </tr>
        ))}
      </tbody>
    </table>
  );
}

/** How a replay answered a call (tag `replay`): hit, miss, passthrough, or fault (a fault rule
 * answered instead of the recording), the last one marked apart. */
export function ReplayBadge({ value }: { value: string }) {
  const known = ["hit", "miss", "passthrough", "fault"].includes(value) ? value : "other";
  return (
    <span className={`badge replay replay-${known}`} title={`replay: ${value}`}>
      {value === "fault" ? "⚡ " : ""}replay {value}
    </span>
  );
}
