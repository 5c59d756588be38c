// An LLM call read as a conversation (GET /api/events/{id}/conversation, built by
// tracelab/analysis/conversation.py): the turns by role, tool calls and their results, the
// completion. Text only, as every payload: React text nodes, never HTML.
import { pretty } from "./Payload";

export interface ToolCall {
  name: string | null;
  arguments: unknown;
  id: string | null;
}

export interface Message {
  role: "system" | "user" | "assistant" | "tool";
  content: string | null;
  tool_calls: ToolCall[];
  tool_call_id: string | null;
  name: string | null;
  reasoning: string | null;
  is_error: boolean;
}

export interface ConversationData {
  format: string;
  provider: string | null;
  model: string | null;
  messages: Message[];
  completion: Message | null;
  finish_reason: string | null;
  streamed: boolean;
  truncated: boolean;
  tools: string[];
}

function Call({ call }: { call: ToolCall }) {
  const args = call.arguments;
  const text = args === null || args === undefined ? "" : typeof args === "string" ? args : pretty(args);
  return (
    <div className="conv-call" data-testid="tool-call">
      <span className="muted">→ calls </span>
      <code>{call.name ?? "?"}</code>
      {call.id ? <span className="muted small"> {call.id}</span> : null}
      {text ? <pre className="code small">{text}</pre> : null}
    </div>
  );
}

function Turn({ message, completion = false }: { message: Message; completion?: boolean }) {
  return (
    <div className={`conv-msg role-${message.role}${completion ? " completion" : ""}`}
      data-role={message.role}>
      <div className="conv-role">
        {message.role}
        {message.role === "tool" ? (
          <span className="muted">
            {" "}result of {message.name ?? "a call"}{message.tool_call_id ? ` (${message.tool_call_id})` : ""}
          </span>
        ) : null}
        {message.is_error ? <span className="badge bad-bg">error</span> : null}
      </div>
      {message.reasoning ? (
        <details className="conv-reasoning"><summary>reasoning</summary>
          <div className="conv-text">{message.reasoning}</div></details>
      ) : null}
      {message.content !== null ? <div className="conv-text">{message.content}</div> : null}
      {message.tool_calls.map((call, i) => <Call key={i} call={call} />)}
    </div>
  );
}

export default function Conversation({ conv }: { conv: ConversationData }) {
  return (
    <section className="payload conversation" aria-label="Conversation">
      <h4>Conversation</h4>
      <div className="muted small">
        {conv.format}{conv.model ? ` · ${conv.model}` : ""}{conv.streamed ? " · streamed" : ""}
        {conv.tools.length ? ` · tools offered: ${conv.tools.join(", ")}` : ""}
      </div>
      {conv.truncated ? (
        <div className="error-box">cut short: the stream was not recorded whole</div>
      ) : null}
      {conv.messages.map((m, i) => <Turn key={i} message={m} />)}
      <h5>
        Completion{conv.finish_reason ? <span className="muted"> · finish: {conv.finish_reason}</span> : null}
      </h5>
      {conv.completion ? (
        <Turn message={conv.completion} completion />
      ) : (
        <div className="muted">no answer recorded</div>
      )}
    </section>
  );
}
