/**
 * The canonical LLM fields (`llm.*` tags, spec/README.md "LLM fields") of one LLM HTTP call:
 * the Python SDK's `tracelab/sdk/llm.py`, line for line, so both SDKs (and the proxy) give the
 * same tags for the same call. The shared corpus spec/llm/cases/ holds them to it.
 *
 * Understood: OpenAI chat completions, legacy completions, responses and embeddings, Anthropic
 * messages, Gemini `generateContent`, as one JSON body or streamed as Server-Sent Events
 * (Gemini's `streamGenerateContent` also as a JSON array). Streams are read event by event, so
 * usage sent only in the final event is found, `llm.ttft_ms` is the time of the piece that
 * completed the first event carrying output, and tool names come from the deltas. Tokens are
 * normalised: input counts ALL input (Anthropic's cached input added back), output includes
 * reasoning (Gemini's thoughts added). Nothing here throws: bad input gives fewer tags.
 */

/** Largest SSE event (or unfinished line) kept while scanning; past it the scanner stops. */
export const MAX_EVENT_CHARS = 1 << 20;
const GEMINI_PATH = /\/models\/([^/:]+):(?:stream)?generatecontent$/i;
const TERMINAL = new Set(["completed", "incomplete", "failed", "cancelled"]);
const RESPONSE_TOOL_ITEMS = new Set(["function_call", "custom_tool_call", "mcp_call"]);
const ANTHROPIC_TOOL_BLOCKS = new Set(["tool_use", "server_tool_use", "mcp_tool_use"]);
const SSE_FIELDS = ["data:", "event:", "id:", "retry:", ":"];
const ANTHROPIC_KINDS = new Set(["message", "message_start", "message_delta", "content_block_start", "content_block_delta"]);

type Obj = Record<string, unknown>;

function isObj(value: unknown): value is Obj {
  return value !== null && typeof value === "object" && !Array.isArray(value);
}
const obj = (value: unknown): Obj => (isObj(value) ? value : {});
const list = (value: unknown): unknown[] => (Array.isArray(value) ? value : []);
const int = (value: unknown): number | null => (typeof value === "number" && Number.isInteger(value) ? value : null);
const stripEndSlashes = (path: string): string => path.replace(/\/+$/, "");

/** `chat`, `completions`, `responses`, `embeddings`, `messages` or `generate_content` by the path. */
export function operation(path: string): string | null {
  const low = stripEndSlashes(path.toLowerCase());
  if (GEMINI_PATH.test(low)) return "generate_content";
  const suffixes: Array<[string, string]> = [["/chat/completions", "chat"], ["/responses", "responses"],
    ["/embeddings", "embeddings"], ["/messages", "messages"], ["/completions", "completions"]];
  for (const [suffix, name] of suffixes) if (low.endsWith(suffix)) return name;
  return null;
}

/** Gemini names the model in the path (`/v1beta/models/gemini-2.0-flash:generateContent`). */
export function pathModel(path: string): string | null {
  const found = GEMINI_PATH.exec(stripEndSlashes(path));
  return found ? found[1] : null;
}

/** What one LLM response said, accumulated over its events (or its one JSON body). */
export class Fold {
  model: string | null = null;
  readonly finish = new Map<number, string>();
  readonly tools = new Map<string, string>();
  ttft: number | null = null;
  openai: Obj = {};
  anthropic: Obj = {};
  gemini: Obj = {};
  seen = false;
  responses = false;
  choices = false;

  feed(data: unknown, t: number | null = null): void {
    if (!isObj(data)) return;
    let content = false;
    const kind = data.type;
    if (Array.isArray(data.candidates) || "usageMetadata" in data) content = this.geminiEvent(data);
    else if (typeof kind === "string" && kind.startsWith("response.")) content = this.responseEvent(kind, data);
    else if (data.object === "response") this.response(data);
    else if (typeof kind === "string" && ANTHROPIC_KINDS.has(kind)) content = this.anthropicEvent(kind, data);
    else if ("choices" in data || "usage" in data || "data" in data) content = this.chat(data);
    else return;
    this.seen = true;
    if (content && t !== null && this.ttft === null) this.ttft = t;
  }

  private setModel(model: unknown): void {
    if (this.model === null && typeof model === "string" && model) this.model = model;
  }

  private tool(key: string, name: unknown): void {
    if (typeof name === "string" && name && !this.tools.has(key)) this.tools.set(key, name);
  }

  private setFinish(index: number, reason: unknown): void {
    if (typeof reason === "string" && reason) this.finish.set(index, reason.toLowerCase());
  }

  private chat(data: Obj): boolean {
    this.setModel(data.model);
    if (isObj(data.usage)) Object.assign(this.openai, data.usage);
    let content = false;
    this.choices = this.choices || Array.isArray(data.choices);
    list(data.choices).forEach((raw, position) => {
      const choice = obj(raw);
      const index = int(choice.index) ?? position;
      this.setFinish(index, choice.finish_reason);
      if (isObj(choice.message)) {
        list(choice.message.tool_calls).forEach((call, n) => this.tool(`chat:${index}:${n}`, obj(obj(call).function).name));
        this.tool(`chat-fn:${index}`, obj(choice.message.function_call).name);
      }
      const delta = choice.delta;
      if (isObj(delta)) {
        list(delta.tool_calls).forEach((raw2, n) => {
          const call = obj(raw2);
          this.tool(`chat:${index}:${int(call.index) ?? n}`, obj(call.function).name);
          content = true;
        });
        if (delta.function_call) {
          this.tool(`chat-fn:${index}`, obj(delta.function_call).name);
          content = true;
        }
        content = content || ["content", "refusal", "reasoning_content", "reasoning"]
          .some((k) => typeof delta[k] === "string" && (delta[k] as string).length > 0);
      }
      content = content || (typeof choice.text === "string" && choice.text.length > 0);
    });
    return content;
  }

  private response(response: Obj): void {
    this.responses = true;
    this.setModel(response.model);
    if (isObj(response.usage)) Object.assign(this.openai, response.usage);
    const status = response.status;
    if (status === "incomplete") {
      const reason = obj(response.incomplete_details).reason;
      this.finish.set(0, String(reason || status).toLowerCase());
    } else if (typeof status === "string" && TERMINAL.has(status)) {
      this.finish.set(0, status);
    }
    list(response.output).forEach((item, n) => this.responseItem(n, obj(item)));
  }

  private responseItem(n: unknown, item: Obj): void {
    if (typeof item.type === "string" && RESPONSE_TOOL_ITEMS.has(item.type)) {
      this.tool(`resp:${String(item.id || item.call_id || pyStr(n))}`, item.name);
    }
  }

  private responseEvent(kind: string, data: Obj): boolean {
    if (isObj(data.response)) this.response(data.response);
    if (kind === "response.output_item.added" || kind === "response.output_item.done") {
      const item = obj(data.item);
      this.responseItem(data.output_index, item);
      return typeof item.type === "string" && RESPONSE_TOOL_ITEMS.has(item.type);
    }
    return kind.endsWith(".delta");
  }

  private anthropicEvent(kind: string, data: Obj): boolean {
    if (kind === "message" || kind === "message_start") {
      const message = kind === "message_start" ? data.message : data;
      if (!isObj(message)) return false;
      this.setModel(message.model);
      Object.assign(this.anthropic, obj(message.usage));
      this.setFinish(0, message.stop_reason);
      list(message.content).forEach((raw, n) => {
        const block = obj(raw);
        if (typeof block.type === "string" && ANTHROPIC_TOOL_BLOCKS.has(block.type)) this.tool(`msg:${n}`, block.name);
      });
      return false;
    }
    if (kind === "message_delta") {
      for (const [k, v] of Object.entries(obj(data.usage))) if (v !== null && v !== undefined) this.anthropic[k] = v;
      this.setFinish(0, obj(data.delta).stop_reason);
      return false;
    }
    if (kind === "content_block_start") {
      const block = obj(data.content_block);
      if (typeof block.type === "string" && ANTHROPIC_TOOL_BLOCKS.has(block.type)) {
        this.tool(`msg:${pyStr(int(data.index))}`, block.name);
      }
      return false;
    }
    return true;
  }

  private geminiEvent(data: Obj): boolean {
    this.setModel(data.modelVersion);
    if (isObj(data.usageMetadata)) this.gemini = { ...data.usageMetadata };
    let content = false;
    list(data.candidates).forEach((raw, position) => {
      const candidate = obj(raw);
      const index = int(candidate.index) ?? position;
      this.setFinish(index, candidate.finishReason);
      for (const rawPart of list(obj(candidate.content).parts)) {
        const part = obj(rawPart);
        if (isObj(part.functionCall)) {
          this.tool(`gem:${this.tools.size}`, part.functionCall.name);
          content = true;
        } else if (typeof part.text === "string" && part.text) {
          content = true;
        }
      }
    });
    return content;
  }

  /** input, cached_input, output, reasoning and total tokens, normalised. */
  tokens(): Array<[string, number]> {
    const out = new Map<string, number>();
    const put = (key: string, value: number | null): void => {
      if (value !== null) out.set(key, value);
    };
    if (Object.keys(this.anthropic).length) {
      const u = this.anthropic;
      const base = int(u.input_tokens), read = int(u.cache_read_input_tokens), made = int(u.cache_creation_input_tokens);
      if (base !== null) out.set("input", base + (read ?? 0) + (made ?? 0));
      put("cached_input", read);
      put("output", int(u.output_tokens));
    } else if (Object.keys(this.gemini).length) {
      const u = this.gemini;
      const candidates = int(u.candidatesTokenCount), thoughts = int(u.thoughtsTokenCount);
      put("input", int(u.promptTokenCount));
      put("cached_input", int(u.cachedContentTokenCount));
      if (candidates !== null || thoughts !== null) out.set("output", (candidates ?? 0) + (thoughts ?? 0));
      put("reasoning", thoughts);
      put("total", int(u.totalTokenCount));
    } else if (Object.keys(this.openai).length) {
      const u = this.openai;
      put("input", int(u.prompt_tokens) ?? int(u.input_tokens));
      put("output", int(u.completion_tokens) ?? int(u.output_tokens));
      put("total", int(u.total_tokens));
      const detailsIn = nonEmpty(obj(u.prompt_tokens_details)) ?? obj(u.input_tokens_details);
      put("cached_input", int(detailsIn.cached_tokens));
      const detailsOut = nonEmpty(obj(u.completion_tokens_details)) ?? obj(u.output_tokens_details);
      put("reasoning", int(detailsOut.reasoning_tokens));
    }
    if (!out.has("total") && out.has("input") && out.has("output")) out.set("total", out.get("input")! + out.get("output")!);
    return Array.from(out);
  }

  tags(): Record<string, string> {
    const tags: Record<string, string> = {};
    for (const [name, value] of this.tokens()) tags[`llm.${name}_tokens`] = String(value);
    if (this.finish.size) tags["llm.finish_reason"] = this.finish.get(Math.min(...this.finish.keys()))!;
    if (this.tools.size) tags["llm.tool_calls"] = Array.from(this.tools.values()).join(",");
    if (this.ttft !== null) tags["llm.ttft_ms"] = this.ttft.toFixed(3);
    return tags;
  }
}

function nonEmpty(value: Obj): Obj | null {
  return Object.keys(value).length ? value : null;
}

/** A key part as Python's str() writes it (None for null). */
function pyStr(value: unknown): string {
  return value === null || value === undefined ? "None" : String(value);
}

/** Server-Sent Events parsed incrementally from text pieces, each event fed to a `Fold`. */
export class SSEScanner {
  readonly fold: Fold;
  private buffer = "";
  private data: string[] = [];
  private started = false;
  dead = false;
  events = 0;

  constructor(fold?: Fold) {
    this.fold = fold ?? new Fold();
  }

  feed(text: string, t: number | null = null): void {
    if (this.dead || !text) return;
    let buffer = this.buffer + text;
    if (!this.started) {
      const head = buffer.replace(/^[\ufeff \t\r\n]+/, "");
      if (!head) {
        this.buffer = buffer;
        return;
      }
      if (!SSE_FIELDS.some((f) => head.startsWith(f) || f.startsWith(head))) {
        this.stop();
        return;
      }
      if (!SSE_FIELDS.some((f) => head.startsWith(f))) {
        this.buffer = buffer;
        return;
      }
      this.started = true;
    }
    const hold = buffer.endsWith("\r");
    if (hold) buffer = buffer.slice(0, -1);
    const lines = buffer.replace(/\r\n/g, "\n").replace(/\r/g, "\n").split("\n");
    this.buffer = lines.pop()! + (hold ? "\r" : "");
    for (const line of lines) this.line(line, t);
    if (this.buffer.length + this.data.reduce((n, d) => n + d.length, 0) > MAX_EVENT_CHARS) this.stop();
  }

  /** The stream ended: dispatch a last event left without its blank line. */
  end(t: number | null = null): Fold {
    if (!this.dead) {
      if (this.buffer) this.line(this.buffer.replace(/\r+$/, ""), t);
      this.line("", t);
      this.buffer = "";
    }
    return this.fold;
  }

  private stop(): void {
    this.dead = true;
    this.buffer = "";
    this.data = [];
  }

  private line(line: string, t: number | null): void {
    if (!line) {
      if (this.data.length) {
        const data = this.data.join("\n");
        this.data = [];
        this.events++;
        if (data.trim() !== "[DONE]") {
          let parsed: unknown;
          try {
            parsed = JSON.parse(data);
          } catch {
            return;
          }
          this.fold.feed(parsed, t);
        }
      }
      return;
    }
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    if (field === "data") {
      const value = colon < 0 ? "" : line.slice(colon + 1);
      this.data.push(value.startsWith(" ") ? value.slice(1) : value);
    }
  }
}

/** One piece of a stream as the contract stores it. */
export interface Piece {
  t?: unknown;
  data?: unknown;
  encoding?: unknown;
}

function textOf(body: unknown): string | null {
  if (typeof body === "string") return body;
  if (isObj(body) && body.$tracelab === "truncated" && body.encoding === "text" && typeof body.data === "string") {
    return body.data;
  }
  return null;
}

/** The response as one JSON body, a JSON array of bodies, or SSE (timed by `chunks` when given). */
export function foldResponse(responseBody: unknown, chunks?: readonly Piece[] | null): Fold {
  const fold = new Fold();
  let body = responseBody;
  if (body instanceof Uint8Array) {
    const text = new TextDecoder().decode(body);
    try {
      body = JSON.parse(text);
    } catch {
      body = text;
    }
  }
  if (isObj(body) && !("$tracelab" in body)) {
    fold.feed(body);
    return fold;
  }
  if (Array.isArray(body)) {
    for (const item of body) fold.feed(item);
    return fold;
  }
  const texts = (chunks ?? []).filter((c) => isObj(c) && typeof c.data === "string" && (c.encoding ?? "text") === "text");
  const scanner = new SSEScanner(fold);
  if (texts.length) {
    for (const chunk of texts) scanner.feed(chunk.data as string, typeof chunk.t === "number" ? chunk.t : null);
  } else {
    scanner.feed(textOf(body) ?? "");
  }
  return scanner.end();
}

/**
 * The `llm.*` tags of one LLM call whose provider is known. `given`: the response already folded
 * while it streamed by (a stream read as the caller read it), used instead of the body.
 */
export function llmFields(provider: string, path: string, requestBody: unknown, responseBody: unknown,
  chunks?: readonly Piece[] | null, given?: Fold | null): Record<string, string> {
  const tags: Record<string, string> = { "llm.provider": provider };
  try {
    const fold = given ?? foldResponse(responseBody, chunks);
    let op = operation(path);
    if (op === null && fold.seen) {
      op = Object.keys(fold.gemini).length ? "generate_content" : Object.keys(fold.anthropic).length ? "messages"
        : fold.responses ? "responses" : fold.choices ? "chat" : null;
    }
    if (op) tags["llm.operation"] = op;
    const request = obj(requestBody);
    const model = fold.model || (typeof request.model === "string" && request.model ? request.model : null) || pathModel(path);
    if (model) tags["llm.model"] = model;
    Object.assign(tags, fold.tags());
  } catch {
    // tracing never breaks the traced program: fewer tags
  }
  return tags;
}
