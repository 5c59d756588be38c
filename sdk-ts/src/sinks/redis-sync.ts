/**
 * A synchronous XADD for the moment the process dies (`process.exit()`, an uncaught exception):
 * Node runs no more I/O then, so the last events (a run's end among them) would be lost.
 *
 * Node has no synchronous sockets, so a short-lived child Node process (`spawnSync`) speaks
 * RESP to Redis for us: the events go in on stdin, the exit status says whether every command
 * got a non-error reply. It is bounded by the shutdown timeout; a refused connection fails at
 * once. The child loads nothing but Node's `net`/`tls` (NODE_OPTIONS is dropped, so a preload
 * of the app's can't run in it). Supports `redis://` and `rediss://` URLs with user, password
 * and database number, like the URLs ioredis accepts for TCP. Only when the running binary is
 * Node itself: in a single-executable app, Electron or a packaged binary, `process.execPath`
 * is the app, and running it again would start the app, not this script.
 */
import { spawnSync } from "node:child_process";
import { basename } from "node:path";

const CHILD = String.raw`
const net = require("net"), tls = require("tls");
const chunks = [];
process.stdin.on("data", (c) => chunks.push(c)).on("end", () => {
  const { url, stream, maxlen, lines } = JSON.parse(Buffer.concat(chunks).toString("utf8"));
  const u = new URL(url);
  const cmds = [];
  if (u.password) {
    const pass = decodeURIComponent(u.password);
    cmds.push(u.username ? ["AUTH", decodeURIComponent(u.username), pass] : ["AUTH", pass]);
  }
  const db = u.pathname.replace(/^\//, "");
  if (db && db !== "0") cmds.push(["SELECT", db]);
  for (const line of lines) {
    cmds.push(maxlen ? ["XADD", stream, "MAXLEN", "~", String(maxlen), "*", "event", line]
      : ["XADD", stream, "*", "event", line]);
  }
  const parts = [];
  for (const cmd of cmds) {
    parts.push(Buffer.from("*" + cmd.length + "\r\n"));
    for (const arg of cmd) {
      const b = Buffer.from(arg, "utf8");
      parts.push(Buffer.from("$" + b.length + "\r\n"), b, Buffer.from("\r\n"));
    }
  }
  const host = (u.hostname || "127.0.0.1").replace(/^\[|\]$/g, "");
  const port = Number(u.port || 6379);
  const sock = u.protocol === "rediss:" ? tls.connect({ host, port, servername: host }) : net.connect({ host, port });
  let buf = Buffer.alloc(0), replies = 0;
  sock.on("error", (e) => { process.stderr.write(String(e && e.message)); process.exit(2); });
  sock.on("data", (d) => {
    buf = Buffer.concat([buf, d]);
    for (;;) {
      const eol = buf.indexOf("\r\n");
      if (eol < 0) return;
      const head = buf.subarray(0, eol).toString("utf8");
      let end = eol + 2;
      if (head[0] === "-") { process.stderr.write(head.slice(1)); process.exit(3); }
      if (head[0] === "$" && Number(head.slice(1)) >= 0) {
        end += Number(head.slice(1)) + 2;
        if (buf.length < end) return;
      }
      buf = buf.subarray(end);
      if (++replies === cmds.length) { sock.end(); process.exit(0); }
    }
  });
  sock.write(Buffer.concat(parts));
});
`;

const NODE_BINARY = /^node[\d.]*(?:js)?(?:\.exe)?$/i;

/** XADD `lines` to `stream` before returning; throws when Redis did not take every one. */
export function xaddSync(url: string, stream: string, maxlen: number | null, lines: string[], timeoutMs: number): void {
  const scheme = url.slice(0, url.indexOf(":"));
  if (scheme !== "redis" && scheme !== "rediss") throw new Error(`no synchronous write for ${scheme}: URLs`);
  if (!NODE_BINARY.test(basename(process.execPath))) {
    throw new Error(`no synchronous write: ${basename(process.execPath)} is not the node binary`);
  }
  const env = { ...process.env };
  delete env.NODE_OPTIONS;
  const result = spawnSync(process.execPath, ["-e", CHILD], {
    input: JSON.stringify({ url, stream, maxlen, lines }),
    env,
    stdio: ["pipe", "ignore", "pipe"],
    timeout: Math.max(1, timeoutMs),
    killSignal: "SIGKILL",
    windowsHide: true,
  });
  if (result.error) throw result.error;
  if (result.status !== 0) {
    const why = result.signal ? `timed out after ${timeoutMs} ms` : String(result.stderr ?? "").slice(0, 300);
    throw new Error(`synchronous XADD failed: ${why}`);
  }
}
