// A step's details: summary, the fault rule that hit it (if any), request and response headers
// and bodies (fetched with payloads); a span with descendants can become the page's root view.
import { useEffect, useState } from "react";
import { api, ApiError, enc } from "../lib/api";
import { fmtMs } from "../lib/format";
import { Body, CopyButton, Fields, Headers, ReplayBadge, pretty } from "./Payload";
import Conversation, { type ConversationData } from "./Conversation";

type Obj = Record<string, unknown>;

interface Props {
  eventId: string;
  onClose: () => void;
  onReroot?: () => void; // given when the step is a span with descendants
}

export default function SidePanel({ eventId, onClose, onReroot }: Props) {
  const [event, setEvent] = useState<Obj | null>(null);
  const [error, setError] = useState<string | null>(null);

  useEffect(() => {
    const ctl = new AbortController();
    setEvent(null);
    setError(null);
    api<Obj>(`/api/events/${enc(eventId)}`, ctl.signal)
      .then(setEvent)
      .catch((e) => {
        if (ctl.signal.aborted) return;
        setError(e instanceof ApiError ? e.message : String(e));
      });
    return () => ctl.abort();
  }, [eventId]);

  return (
    <aside className="side" aria-label="Step details">
      <div className="side-head">
        <h3 className="mono">{event ? String(event.endpoint) : "Step"}</h3>
        <button type="button" onClick={onClose} aria-label="Close details">✕</button>
      </div>
      {error && <div className="error-box">{error}</div>}
      {!event && !error && <div className="muted">Loading…</div>}
      {event && <EventDetails event={event} onReroot={onReroot} />}
    </aside>
  );
}

/** The rule TraceLab injected this call's failure with (tags `fault`, `fault.action`,
 * `fault.rule`), pretty-printed; nothing for a call no rule hit. */
export function FaultSection({ tags }: { tags: Obj }) {
  const rule = tags["fault"];
  if (rule === undefined || rule === null) return null;
  const text = tags["fault.rule"];
  return (
    <section className="payload fault" aria-label="Fault">
      <h4>⚡ Fault injected by TraceLab</h4>
      <table className="kv">
        <tbody>
          <tr><th>rule</th><td className="mono">{String(rule)}</td></tr>
          <tr><th>action</th><td className="mono">{String(tags["fault.action"] ?? "?")}</td></tr>
        </tbody>
      </table>
      {typeof text === "string" && text ? (
        <Body value={text} title="Fault rule" />
      ) : (
        <div className="muted small">the rule itself was not recorded</div>
      )}
    </section>
  );
}

/** An LLM call's conversation, fetched once: undefined while loading, null for other calls
 * or when the API has none (embeddings, a cut request): the raw JSON is shown then. */
function useConversation(event: Obj, isLlm: boolean): ConversationData | null | undefined {
  const [conv, setConv] = useState<ConversationData | null | undefined>(isLlm ? undefined : null);
  const eventId = String(event.event_id);
  useEffect(() => {
    setConv(isLlm ? undefined : null);
    if (!isLlm) return;
    const ctl = new AbortController();
    api<ConversationData>(`/api/events/${enc(eventId)}/conversation`, ctl.signal)
      .then(setConv)
      .catch(() => {
        if (!ctl.signal.aborted) setConv(null); // no conversation: the raw JSON, as before
      });
    return () => ctl.abort();
  }, [eventId, isLlm]);
  return conv;
}

function EventDetails({ event, onReroot }: { event: Obj; onReroot?: () => void }) {
  const tags = (event.tags && typeof event.tags === "object" ? event.tags : {}) as Obj;
  // embeddings are LLM calls but no conversation: not asked for (a 404 in the console)
  const isLlm = (event.kind === "llm" || tags["llm.provider"] !== undefined) &&
    tags["llm.operation"] !== "embeddings";
  const conv = useConversation(event, isLlm);
  const [raw, setRaw] = useState(false);
  const showRaw = conv === null || (conv !== undefined && raw);
  const replay = tags["replay"];
  const request = (event.request ?? {}) as Obj;
  const response = (event.response ?? null) as Obj | null;
  const err = event.error as { type?: string; message?: string } | undefined;
  const started = typeof event.started_at === "number"
    ? new Date(event.started_at / 1e6).toISOString() : "";
  return (
    <div className="side-body">
      <div className="side-actions">
        <CopyButton text={pretty(event)} label="Copy event JSON" />
        {onReroot && (
          <button type="button" onClick={onReroot} title="show only this span and its descendants">
            Re-root here
          </button>
        )}
      </div>
      <table className="kv">
        <tbody>
          <tr><th>status</th><td className={event.status === "error" ? "bad" : "good"}>
            {String(event.status)}{event.status_code != null ? ` ${String(event.status_code)}` : ""}</td></tr>
          <tr><th>kind</th><td>{String(event.kind)}</td></tr>
          <tr><th>service</th><td>{String(event.service)}</td></tr>
          <tr><th>target</th><td className="mono">{String(event.target)}</td></tr>
          <tr><th>latency</th><td>{fmtMs(event.latency_ms as number)}</td></tr>
          <tr><th>started</th><td className="mono">{started}</td></tr>
          <tr><th>event id</th><td className="mono">{String(event.event_id)}</td></tr>
          {event.span_id ? <tr><th>span</th><td className="mono">{String(event.span_id)}</td></tr> : null}
          {event.parent_id ? <tr><th>parent</th><td className="mono">{String(event.parent_id)}</td></tr> : null}
          {replay !== undefined && replay !== null ? (
            <tr><th>replay</th><td><ReplayBadge value={String(replay)} /></td></tr>
          ) : null}
          {event.tags && Object.keys(event.tags as Obj).length ? (
            <tr><th>tags</th><td className="mono">{pretty(event.tags)}</td></tr>
          ) : null}
        </tbody>
      </table>
      {err && (
        <div className="error-box">
          <b>{err.type ?? "error"}</b>: {err.message ?? ""}
        </div>
      )}
      <FaultSection tags={tags} />
      {conv === undefined ? <div className="muted">Loading conversation…</div> : null}
      {conv ? (
        <div className="side-actions">
          <button type="button" aria-pressed={raw} onClick={() => setRaw(!raw)}>
            {raw ? "Show conversation" : "Show raw JSON"}
          </button>
        </div>
      ) : null}
      {conv && !raw ? <Conversation conv={conv} /> : null}
      {showRaw ? (
        <>
          <section className="payload" aria-label="Request">
            <h4>Request</h4>
            <Fields obj={request} skip={["headers", "body"]} />
            {"headers" in request && (<><h5>Headers</h5><Headers headers={request.headers} /></>)}
            {"body" in request && <Body value={request.body} title="Request body" />}
          </section>
          <section className="payload" aria-label="Response">
            <h4>Response</h4>
            {response === null ? (
              <div className="muted">no response (the call raised or timed out)</div>
            ) : (
              <>
                <Fields obj={response} skip={["headers", "body"]} />
                {"headers" in response && (<><h5>Headers</h5><Headers headers={response.headers} /></>)}
                {"body" in response && <Body value={response.body} title="Response body" />}
              </>
            )}
          </section>
        </>
      ) : null}
    </div>
  );
}
